"""Module paths from before the one namespace: a config naming one gets the new name in a one-line
error; a checkpoint pickled under them still loads."""

from __future__ import annotations

import io
import zipfile

import pytest
import torch

from instructray.kernels import AdaptiveKLController
from instructray.orchestrator.config import ConfigError, load_config, validate_config
from instructray.orchestrator.config.renames import RENAMING_PICKLE, renamed


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("orchestrator.demo.world", "instructray.orchestrator.demo.world"),
        ("actors.rule_rewards", "instructray.actors.scoring.rule_rewards"),  # moved by role
        ("actors.learner", "instructray.actors.learner.actor"),
        ("actors.sequences", "instructray.actors.sequences"),
        ("kernels.kl_control", "instructray.kernels.kl_control"),
        ("kernels", "instructray.kernels"),
        ("kernels.layer", None),  # Hugging Face's kernels: no module of ours has that name
        ("orchestrator.nosuch", None),
        ("my_rewards", None),
        ("instructray.orchestrator.demo.world", None),
    ],
)
def test_old_module_paths_and_their_names_now(old, new):
    assert renamed(old) == new


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "--reward.function=model, actors.rule_rewards:brevity",
            "reward.function 'actors.rule_rewards:brevity' names a module path from before "
            "InstructRay's one namespace; use 'instructray.actors.scoring.rule_rewards:brevity'",
        ),
        (
            "--pipeline.labeler=orchestrator.demo.world:rank_responses",
            "pipeline.labeler 'orchestrator.demo.world:rank_responses' names a module path from "
            "before InstructRay's one namespace; use "
            "'instructray.orchestrator.demo.world:rank_responses'",
        ),
    ],
)
def test_a_config_naming_an_old_path_gets_the_new_one(override, message):
    with pytest.raises(ConfigError) as e:
        validate_config(load_config(None, [override]), "pipeline")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_new_paths_pass():
    cfg = load_config(
        None,
        [
            "--reward.function=model, instructray.actors.scoring.rule_rewards:brevity",
            "--reward.weights=[1, 1]",
            "--pipeline.labeler=instructray.orchestrator.demo.world:rank_responses",
        ],
    )
    validate_config(cfg, "ppo")


def test_a_checkpoint_pickled_under_the_old_paths_loads(tmp_path):
    ctl = AdaptiveKLController(0.1, 6.0, 10000)
    ctl.update(12.0, 256)  # a state that is not the initial one
    state = {"kl_ctl": ctl, "values": torch.arange(4.0)}
    buf = io.BytesIO()
    torch.save(state, buf)  # protocol 2: a class is named by a text line (GLOBAL), "module\nname"
    # the same file as the flat layout wrote it: the class under its old module path
    path = tmp_path / "ahead.pt"
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(path, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("data.pkl"):
                new = b"cinstructray.kernels.kl_control\n"
                assert new in data
                data = data.replace(new, b"ckernels.kl_control\n")
            dst.writestr(item, data)
    loaded = torch.load(path, weights_only=False, pickle_module=RENAMING_PICKLE)
    assert type(loaded["kl_ctl"]) is AdaptiveKLController
    assert loaded["kl_ctl"].value == ctl.value != 0.1
    assert torch.equal(loaded["values"], torch.arange(4.0))
