"""Pre-flight check of the model folders a run names, on the driver, before Ray or any actor
starts: a folder the learners or engines would refuse minutes later (after Ray, vLLM and DeepSpeed
came up) is refused here, in one line that names the config key, the folder, what was seen and
what is expected.

Cheap on purpose: it reads config.json and the file list, never the weights. Only the tokenizer is
loaded (small, and the driver loads it anyway). Hub names are skipped by the caller.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROLES = ("policy", "reward", "reference", "tokenizer", "ranking")
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
# Pickles that HF's Trainer writes next to the weights: not weights, so not "pickled weights".
TRAINER_PICKLES = ("training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state")
# Any one of these makes a folder a tokenizer folder (fast, SentencePiece, BPE or WordPiece).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.json",
    "vocab.txt",
    "tekken.json",
)


class ModelFolderError(ValueError):
    """A model folder the run cannot use; its message is one line that says what to fix."""


def check_model_folder(
    path: str, key: str, role: str, *, trust_remote_code: bool = False
) -> list[str]:
    """Check the folder `path` (named by config key `key`) for `role`; -> warnings, one line each.

    Raises ModelFolderError for: no config.json, no weights, only pickled weights, missing
    safetensors shards, a reward folder that is not a one-label sequence classifier, a
    policy/reference/ranking folder that is one, custom code without trust_remote_code."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}, expected one of {', '.join(ROLES)}")
    if role == "tokenizer":
        return check_tokenizer(path, key, trust_remote_code=trust_remote_code)
    folder = Path(path)
    config = _read_config(folder, key)
    warnings = _check_remote_code(folder, key, config, trust_remote_code)
    if role == "reward":
        _check_reward_head(folder, key, config)
    else:
        _check_causal_lm(folder, key, config)
    _check_weights(folder, key, role)
    return warnings


def _listing(folder: Path, names: list[str] | None = None, first: int = 5) -> str:
    """The first few names (of `names`, else of the folder), for a one-line message."""
    names = sorted(p.name for p in folder.iterdir()) if names is None else sorted(names)
    if not names:
        return "nothing (it is empty)"
    more = f" and {len(names) - first} more" if len(names) > first else ""
    return ", ".join(names[:first]) + more


def _read_config(folder: Path, key: str) -> dict[str, Any]:
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        # A LoRA adapter folder is the usual near miss: say so rather than "not a model".
        hint = (
            "it is a PEFT adapter (adapter_config.json): merge it into its base model first"
            if (folder / "adapter_config.json").is_file()
            else "save it with save_pretrained"
        )
        raise ModelFolderError(
            f"{key}: {folder} has no config.json: not a Hugging Face model folder ({hint})"
        )
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFolderError(f"{key}: {cfg_path} is not readable JSON ({e})") from None
    if not isinstance(config, dict):
        raise ModelFolderError(f"{key}: {cfg_path} holds {type(config).__name__}, not an object")
    return config


def _check_remote_code(
    folder: Path, key: str, config: dict[str, Any], trust_remote_code: bool
) -> list[str]:
    """auto_map names code shipped in the folder. transformers runs it only when trusted; without
    trust it falls back to its own class for a model_type it knows, else it fails at load."""
    if "auto_map" not in config or trust_remote_code:
        return []
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    model_type = config.get("model_type")
    if model_type in CONFIG_MAPPING_NAMES:
        return [
            f"{key}: {folder} ships its own model code (auto_map), not run because "
            f"model.trust_remote_code is false: transformers' built-in {model_type!r} class "
            "loads it"
        ]
    raise ModelFolderError(
        f"{key}: {folder} needs its own model code (auto_map; model_type {model_type!r} is unknown "
        "to transformers), which runs only with model.trust_remote_code=true: set it if you trust "
        "that code"
    )


def _check_reward_head(folder: Path, key: str, config: dict[str, Any]) -> None:
    """The scorer and critic load AutoModelForSequenceClassification with num_labels=1: a causal
    LM would get a random score head, a multi-label head a shape mismatch or wrong scores."""
    archs = config.get("architectures") or []
    expected = (
        "expected a ...ForSequenceClassification with one label (train one with instructray rm)"
    )
    if archs and not any(a.endswith("ForSequenceClassification") for a in archs):
        causal = any(a.endswith(("ForCausalLM", "ForConditionalGeneration")) for a in archs)
        kind = "a causal LM" if causal else "a model"
        raise ModelFolderError(
            f"{key}: {folder} is {kind} ({archs[0]}), not a reward model: {expected}"
        )
    # As transformers counts them: id2label decides; without it num_labels, else its default 2.
    id2label = config.get("id2label")
    labels = len(id2label) if id2label else config.get("num_labels", 2)
    if labels != 1:
        name = archs[0] if archs else "sequence classifier"
        raise ModelFolderError(
            f"{key}: {folder} is a {name} with {labels} labels, not a reward model (one scalar "
            f"score per sequence): {expected}"
        )


def _check_causal_lm(folder: Path, key: str, config: dict[str, Any]) -> None:
    """Policy, reference and ranking models generate or score tokens; a classifier cannot."""
    archs = config.get("architectures") or []  # absent: cannot tell, so do not refuse
    if any(a.endswith("ForSequenceClassification") for a in archs):
        raise ModelFolderError(
            f"{key}: {folder} is a sequence classifier ({archs[0]}), e.g. a reward model: "
            "expected a causal LM (...ForCausalLM), such as an SFT model"
        )


def _check_weights(folder: Path, key: str, role: str) -> None:
    names = {p.name for p in folder.iterdir()}
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        _check_shards(folder, key, index)
    if any(n in names for n in SAFE_WEIGHTS):
        return
    pickles = [
        n
        for n in names
        if n.endswith(PICKLE_SUFFIXES + (".bin.index.json",)) and not n.startswith(TRAINER_PICKLES)
    ]
    if not pickles:
        raise ModelFolderError(
            f"{key}: {folder} has no weights: expected model.safetensors or "
            f"model.safetensors.index.json, it holds {_listing(folder)}"
        )
    # Refused on purpose: loading a pickle can run code from the file, so the loaders pass
    # use_safetensors=True. The fix is a one-time conversion by someone who trusts the file.
    auto = "AutoModelForSequenceClassification" if role == "reward" else "AutoModelForCausalLM"
    d = repr(str(folder))
    convert = (
        f'python -c "from transformers import {auto} as A; '
        f'A.from_pretrained({d}, use_safetensors=False).save_pretrained({d})"'
    )
    raise ModelFolderError(
        f"{key}: {folder} holds only pickled weights ({_listing(folder, pickles, 3)}), not loaded "
        "because unpickling can run code from the file: expected safetensors; if you trust the "
        f"file, convert it once with: {convert}"
    )


def _check_shards(folder: Path, key: str, index: Path) -> None:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        shards = set(weight_map.values())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise ModelFolderError(
            f"{key}: {index} is not a safetensors index (expected JSON with a weight_map)"
        ) from None
    missing = sorted(s for s in shards if not (folder / s).is_file())
    if missing:
        raise ModelFolderError(
            f"{key}: {folder} is missing {len(missing)} of the {len(shards)} weight shards that "
            f"model.safetensors.index.json lists, e.g. {missing[0]}: copy the whole folder"
        )


def check_tokenizer(path: str, key: str, *, trust_remote_code: bool = False) -> list[str]:
    """Check the tokenizer folder `path` (config key `key`) loads and can pad; -> warnings."""
    folder = Path(path)
    names = {p.name for p in folder.iterdir()}
    if not any(n in names for n in TOKENIZER_FILES):
        raise ModelFolderError(
            f"{key}: {folder} has no tokenizer files: expected tokenizer.json (or tokenizer.model, "
            f"vocab.json/vocab.txt), it holds {_listing(folder)}"
        )
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    except Exception as e:  # any failure here is the user's folder: report it in one line
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ModelFolderError(
            f"{key}: {folder}: the tokenizer does not load ({type(e).__name__}: {first})"
        ) from None
    if tok.pad_token is None and tok.eos_token is None:
        raise ModelFolderError(
            f"{key}: {folder}'s tokenizer has neither a pad nor an EOS token: expected at least "
            "an EOS token (eos_token in tokenizer_config.json)"
        )
    if tok.pad_token is None:
        return [f"{key}: {folder}'s tokenizer has no pad token: EOS ({tok.eos_token}) will pad"]
    return []


def check_lora_targets(
    path: str, key: str, targets: list[str], *, trust_remote_code: bool = False
) -> list[str]:
    """learner.lora_targets against the linear layers of the model at path (built on the meta
    device from its config.json: no weights read). None of them there: ModelFolderError naming
    the layers it has; some missing: a warning (a family without, say, gate_proj)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if targets == ["all-linear"]:
        return []
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    layers = sorted(
        {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    )
    missing = [t for t in targets if t not in layers]
    if len(missing) == len(targets):
        raise ModelFolderError(
            f"learner.lora_targets = {targets}: no linear layer of {key} ({path}) has these "
            f"names; its linear layers: {', '.join(layers)} (or [all-linear])"
        )
    if missing:
        return [f"learner.lora_targets: {', '.join(missing)} name no layer of {key}; left out"]
    return []
