"""The pre-flight model folder check: each broken folder is refused in one line that names the
key, the folder and what is expected; the real tiny folders pass."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from instructray.orchestrator.model_check import (
    ModelFolderError,
    check_model_folder,
    check_tokenizer,
)


def _edit_config(folder: Path, **changes) -> None:
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    cfg_path.write_text(json.dumps(cfg))


def _shard(folder: Path) -> None:
    """model.safetensors -> a two-shard index whose second shard is absent."""
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def _drop_pad(folder: Path, eos: bool = True) -> None:
    tc_path = folder / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text())
    tc["pad_token"] = None
    if not eos:
        tc["eos_token"] = None
    tc_path.write_text(json.dumps(tc))


# (id, source folder, role, how to break the copy, substrings the one-line message must hold)
REFUSED = [
    (
        "no-config",
        "policy",
        "policy",
        lambda d: (d / "config.json").unlink(),
        ["has no config.json", "not a Hugging Face model folder", "save_pretrained"],
    ),
    (
        "no-weights",
        "policy",
        "policy",
        lambda d: (d / "model.safetensors").unlink(),
        ["has no weights", "expected model.safetensors", "config.json"],
    ),
    (
        "pickled-only",
        "policy",
        "policy",
        lambda d: (d / "model.safetensors").rename(d / "pytorch_model.bin"),
        ["pytorch_model.bin", "unpickling", "use_safetensors=False", "save_pretrained"],
    ),
    (
        "missing-shard",
        "policy",
        "reference",
        _shard,
        ["missing 1 of the 2", "model-00002-of-00002.safetensors"],
    ),
    (
        "reward-is-causal-lm",
        "policy",
        "reward",
        lambda d: None,
        ["is a causal LM (Qwen2ForCausalLM)", "not a reward model", "ForSequenceClassification"],
    ),
    (
        "reward-two-labels",
        "reward",
        "reward",
        lambda d: _edit_config(d, id2label={"0": "a", "1": "b"}, label2id=None),
        ["with 2 labels", "one label"],
    ),
    (
        "policy-is-classifier",
        "reward",
        "ranking",
        lambda d: None,
        ["Qwen2ForSequenceClassification", "expected a causal LM"],
    ),
    (
        "no-tokenizer-files",
        "policy",
        "tokenizer",
        lambda d: (d / "tokenizer.json").unlink(),
        ["has no tokenizer files", "expected tokenizer.json"],
    ),
    (
        "no-pad-no-eos",
        "policy",
        "tokenizer",
        lambda d: _drop_pad(d, eos=False),
        ["neither a pad nor an EOS token"],
    ),
    (
        "custom-code-untrusted",
        "policy",
        "policy",
        lambda d: _edit_config(d, model_type="my_llm", auto_map={"AutoConfig": "x.MyConfig"}),
        ["auto_map", "model.trust_remote_code=true"],
    ),
]


@pytest.fixture
def sources(tiny_policy, tiny_reward):
    return {"policy": Path(tiny_policy), "reward": Path(tiny_reward)}


@pytest.mark.parametrize(
    ("source", "role", "mutate", "expected"),
    [case[1:] for case in REFUSED],
    ids=[case[0] for case in REFUSED],
)
def test_broken_folder_is_refused_in_one_line(sources, tmp_path, source, role, mutate, expected):
    folder = tmp_path / "model"
    shutil.copytree(sources[source], folder)
    mutate(folder)
    key = f"model.{role}"
    with pytest.raises(ModelFolderError) as info:
        check_model_folder(str(folder), key, role)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{key}: {folder}")
    for part in expected:
        assert part in message


def test_tokenizer_without_pad_warns_that_eos_pads(tiny_policy, tmp_path):
    folder = tmp_path / "tok"
    shutil.copytree(tiny_policy, folder)
    _drop_pad(folder)
    (warning,) = check_tokenizer(str(folder), "model.tokenizer")
    assert warning.startswith(f"model.tokenizer: {folder}")
    assert "no pad token" in warning and "<|endoftext|>" in warning


def test_known_model_type_with_custom_code_only_warns(tiny_policy, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_policy, folder)
    _edit_config(folder, auto_map={"AutoModelForCausalLM": "x.MyModel"})
    (warning,) = check_model_folder(str(folder), "model.policy", "policy")
    assert "auto_map" in warning and "built-in 'qwen2'" in warning
    assert check_model_folder(str(folder), "model.policy", "policy", trust_remote_code=True) == []


def test_missing_architectures_is_not_refused(tiny_reward, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_reward, folder)
    _edit_config(folder, architectures=None)
    assert check_model_folder(str(folder), "model.policy", "policy") == []
    assert check_model_folder(str(folder), "model.reward", "reward") == []


def test_real_tiny_folders_pass(tiny_policy, tiny_reward):
    assert check_model_folder(tiny_policy, "model.policy", "policy") == []
    assert check_model_folder(tiny_policy, "model.reference", "reference") == []
    assert check_model_folder(tiny_reward, "model.reward", "reward") == []
    assert check_tokenizer(tiny_policy, "model.tokenizer") == []
    assert check_model_folder(tiny_reward, "model.tokenizer", "tokenizer") == []
