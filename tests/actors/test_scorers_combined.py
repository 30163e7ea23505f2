"""RewardActor with several rewards (reward.function `model, module:function`): the weighted sum
of the reward model's normalized score and a rule function's, exactly; no Ray."""

from __future__ import annotations

import json
import shutil
import sys
import types

import pytest
import torch

from instructray.actors.scoring.scorers import SCORE_STATS_FILE, RewardActor
from instructray.actors.sequences import make_sequence_batch

PROMPTS = [[5, 6, 7], [8], [9, 10, 11]]
RESPONSES = [[20, 21], [22, 23, 24], [26]]
TEXTS = ["a", "b", "c"]
RESPONSE_TEXTS = ["x", "yy", ""]


@pytest.fixture()
def rm_with_stats(tiny_reward, tmp_path) -> str:
    """The tiny reward model with saved score stats (for reward.normalize)."""
    folder = tmp_path / "rm"
    shutil.copytree(tiny_reward, folder)
    (folder / SCORE_STATS_FILE).write_text(json.dumps({"mean": 0.25, "std": 2.0}))
    return str(folder)


@pytest.fixture()
def length_reward():
    mod = types.ModuleType("combined_rewards_for_test")
    mod.length = lambda prompts, responses: [float(len(r)) for r in responses]
    mod.short = lambda prompts, responses: [1.0]
    sys.modules[mod.__name__] = mod
    yield mod.__name__
    del sys.modules[mod.__name__]


def test_combined_is_the_weighted_sum_of_normalized_rm_and_function(
    rm_with_stats, tiny_policy, length_reward
):
    batch = make_sequence_batch(PROMPTS, RESPONSES, pad_id=1)
    args = (batch, TEXTS, RESPONSE_TEXTS)
    rm = RewardActor(rm_with_stats, "", tiny_policy, normalize=True, batch_size=2)
    rm_scores = rm.score(*args)
    actor = RewardActor(
        rm_with_stats,
        f"model, {length_reward}:length",
        tiny_policy,
        normalize=True,
        batch_size=2,
        weights=[0.5, -2.0],
    )
    combined, parts = actor.score_sources(*args)
    fn_scores = torch.tensor([1.0, 2.0, 0.0])
    assert torch.equal(parts, torch.stack([rm_scores, fn_scores], dim=1))
    assert torch.equal(combined, 0.5 * rm_scores + -2.0 * fn_scores)
    assert torch.equal(actor.score(*args), combined)
    # Weights left empty: 1 each.
    spec = f"model, {length_reward}:length"
    plain = RewardActor(rm_with_stats, spec, tiny_policy, normalize=True, batch_size=2)
    assert torch.equal(plain.score(*args), rm_scores + fn_scores)


def test_functions_alone_load_no_model_and_errors_name_the_entry(length_reward):
    batch = make_sequence_batch(PROMPTS, RESPONSES, pad_id=1)
    spec = f"{length_reward}:length, instructray.actors.scoring.rule_rewards:brevity"
    actor = RewardActor(function=spec, weights=[2.0, 50.0])
    assert actor.model is None  # no `model` entry: no reward model, none needed
    combined, parts = actor.score_sources(batch, TEXTS, RESPONSE_TEXTS)
    assert parts[:, 0].tolist() == [1.0, 2.0, 0.0]
    assert torch.equal(combined, 2.0 * parts[:, 0] + 50.0 * parts[:, 1])
    bad = RewardActor(function=f"{length_reward}:length, {length_reward}:short")
    with pytest.raises(ValueError, match="short' returned 1 scores for 3 samples"):
        bad.score(batch, TEXTS, RESPONSE_TEXTS)
    with pytest.raises(ValueError, match="reward.weights has 1 weights for the 2 entries"):
        RewardActor(function=spec, weights=[1.0])
    with pytest.raises(ValueError, match="reward model folder /nope does not exist"):
        RewardActor("/nope", f"model, {length_reward}:length")


def test_normalized_rm_score_is_raw_minus_saved_mean_over_saved_std(tiny_reward, tmp_path):
    """reward.normalize against (raw - mean) / std computed here from the numbers this test wrote
    into score_stats.json, not against another normalizing RewardActor; std 0 is floored at 1e-6."""
    batch = make_sequence_batch(PROMPTS, RESPONSES, pad_id=1)
    args = (batch, TEXTS, RESPONSE_TEXTS)
    raw = RewardActor(tiny_reward, "", tiny_reward, normalize=False, batch_size=2).score(*args)
    folder = tmp_path / "rm"
    shutil.copytree(tiny_reward, folder)
    stats = folder / SCORE_STATS_FILE
    stats.write_text(json.dumps({"mean": 0.37, "std": 2.5}))
    got = RewardActor(str(folder), "", tiny_reward, normalize=True, batch_size=2).score(*args)
    want = (raw - 0.37) / 2.5
    assert not torch.allclose(want, raw)  # the stats move every score: an ignored file fails
    torch.testing.assert_close(got, want)
    stats.write_text(json.dumps({"mean": 0.37, "std": 0.0}))
    got = RewardActor(str(folder), "", tiny_reward, normalize=True, batch_size=2).score(*args)
    torch.testing.assert_close(got, (raw - 0.37) / 1e-6)
