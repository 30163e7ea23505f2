"""Reward and reference scorers: the numbers of a plain forward, and clear errors."""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from instructray.actors.scoring.scorers import ReferenceActor, RewardActor
from instructray.actors.sequences import make_sequence_batch, response_logprobs, sequence_scores

PROMPTS = [[5, 6, 7], [8], [9, 10, 11]]
RESPONSES = [[20, 21], [22, 23, 24], [26]]
TEXTS = ["a", "b", "c"]


@pytest.fixture()
def reward_module():
    """A throwaway importable module of reward functions, good and bad."""
    mod = types.ModuleType("fake_rewards_for_test")
    mod.good = lambda prompts, responses: [float(len(r)) for r in responses]
    mod.short = lambda prompts, responses: [1.0]
    mod.nan = lambda prompts, responses: [0.0, math.nan, 1.0]
    mod.not_a_list = lambda prompts, responses: 3.0

    def boom(prompts, responses):
        raise KeyError("oops")

    mod.boom = boom
    sys.modules[mod.__name__] = mod
    yield mod.__name__
    del sys.modules[mod.__name__]


def batch():
    return make_sequence_batch(PROMPTS, RESPONSES, pad_id=1)


def test_reward_function_scores_and_errors(reward_module):
    b = batch()
    got = RewardActor(function=f"{reward_module}:good").score(b, TEXTS, ["x", "yy", ""])
    assert got.tolist() == [1.0, 2.0, 0.0]
    cases = {
        "short": "returned 1 scores for 3 samples",
        "nan": "returned non-finite nan for sample 1 (prompt 'b')",
        "not_a_list": "returned a float, expected a list of 3 numbers",
        "boom": "reward.function 'fake_rewards_for_test:boom' raised KeyError",
    }
    for name, message in cases.items():
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            RewardActor(function=f"{reward_module}:{name}").score(b, TEXTS, TEXTS)


def test_reward_function_spec_errors(reward_module):
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_xyz'"):
        RewardActor(function="no_such_module_xyz:f")
    with pytest.raises(ValueError, match="has no function 'missing'"):
        RewardActor(function=f"{reward_module}:missing")


def test_reward_model_scores_equal_a_plain_forward(tiny_reward, tiny_policy):
    actor = RewardActor(model_path=tiny_reward, policy_tokenizer=tiny_policy, batch_size=2)
    assert actor.same_vocab
    got = actor.score(batch(), TEXTS, TEXTS)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_reward).eval()
    with torch.no_grad():
        want = sequence_scores(model, batch())
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_reward_normalize_needs_saved_stats(tiny_reward):
    with pytest.raises(ValueError, match="score_stats.json does not exist"):
        RewardActor(model_path=tiny_reward, normalize=True)
    with pytest.raises(ValueError, match="reward model folder /nope does not exist"):
        RewardActor(model_path="/nope")


def test_reference_logprobs_equal_a_plain_forward_and_are_masked(tiny_policy):
    actor = ReferenceActor(tiny_policy, batch_size=2, chunk_size=5)
    got = actor.logprobs(batch())
    model = AutoModelForCausalLM.from_pretrained(tiny_policy).eval()
    with torch.no_grad():
        want = response_logprobs(model, batch()) * batch().response_mask
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert got[2, 1:].abs().sum() == 0  # padding positions are zero
