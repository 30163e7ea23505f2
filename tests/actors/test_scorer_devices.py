"""The scorers compute on their device: the model lives there, every batch moves there, and
results come back to the CPU as float32; the learner's log-prob and value modules keep every
tensor on the device of their batch.

Tested without a GPU on a second device type, `meta` (shapes without data): a forward there runs
through every module, and each module sees the tensors it computes with. Attention is eager:
transformers' SDPA mask reads a value (`.item()`), which a meta tensor has not."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from instructray.actors.scoring.scorers import (
    ReferenceActor,
    RewardActor,
    check_attention,
    scorer_device,
)
from instructray.actors.sequences import make_sequence_batch

PROMPTS = [[5, 6, 7], [8]]
RESPONSES = [[20, 21], [22, 23, 24]]
TEXTS = ["a b", "c"]


def batch():
    return make_sequence_batch(PROMPTS, RESPONSES, pad_id=1)  # (2, 3 + 3), on the CPU


def devices_seen(model: torch.nn.Module) -> set[str]:
    """The device types of every tensor any module of `model` is called with (filled as it
    runs)."""
    seen: set[str] = set()

    def record(module, args, kwargs):
        seen.update(t.device.type for t in [*args, *kwargs.values()] if torch.is_tensor(t))

    for module in model.modules():
        module.register_forward_pre_hook(record, with_kwargs=True)
    return seen


@pytest.mark.parametrize("same_vocab", [True, False], ids=["policy-ids", "re-tokenized"])
def test_the_reward_model_computes_on_its_device(tiny_reward, tiny_policy, same_vocab):
    actor = RewardActor(
        model_path=tiny_reward,
        policy_tokenizer=tiny_policy if same_vocab else "",
        attn_implementation="eager",
        batch_size=1,  # two chunks
        device="meta",
    )
    assert actor.same_vocab == same_vocab
    assert {p.device.type for p in actor.model.parameters()} == {"meta"}
    seen = devices_seen(actor.model)
    scores = actor.model_scores(batch(), TEXTS, TEXTS)
    assert seen == {"meta"}  # every input of every module: the batch was moved, not the model
    assert (scores.device.type, scores.shape, scores.dtype) == ("meta", (2,), torch.float32)


def test_the_reference_computes_on_its_device(tiny_policy):
    actor = ReferenceActor(tiny_policy, attn_implementation="eager", batch_size=1, device="meta")
    assert {p.device.type for p in actor.model.parameters()} == {"meta"}
    seen = devices_seen(actor.model)
    logprobs = actor.device_logprobs(batch())
    assert seen == {"meta"}
    assert (logprobs.device.type, logprobs.shape, logprobs.dtype) == ("meta", (2, 3), torch.float32)


def test_results_come_back_to_the_cpu_in_float32(tiny_reward, tiny_policy):
    # No GPU here: the default device is the CPU (on a GPU node, cuda:0, the one Ray gave).
    assert scorer_device() == torch.device("cpu") and not torch.cuda.is_available()
    reward = RewardActor(model_path=tiny_reward, policy_tokenizer=tiny_policy, dtype="bfloat16")
    scores = reward.score(batch(), TEXTS, TEXTS)
    reference = ReferenceActor(tiny_policy, dtype="bfloat16")
    logprobs = reference.logprobs(batch())
    assert (scores.device.type, scores.dtype) == ("cpu", torch.float32)
    assert (logprobs.device.type, logprobs.dtype) == ("cpu", torch.float32)
    assert logprobs[0, 2] == 0  # padding masked on the CPU: row 0 has 2 response tokens of 3


def test_flash_attention_without_a_gpu_or_flash_attn_is_one_clear_error(tiny_policy, monkeypatch):
    with pytest.raises(
        ValueError, match=r"flash_attention_2 needs a GPU, this actor computes on cpu"
    ):
        ReferenceActor(tiny_policy, attn_implementation="flash_attention_2")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "flash_attn" else real(name, *a),
    )
    with pytest.raises(ValueError, match=r"needs the flash-attn package on every GPU node"):
        check_attention("flash_attention_2", torch.device("cuda", 0))
    check_attention("sdpa", torch.device("cpu"))  # anything else passes


def test_the_learners_logprob_and_value_modules_compute_on_their_device(tiny_policy, tiny_reward):
    # The modules the learner's DeepSpeed engines wrap (the policy's log-probs with entropy, the
    # critic's token values), called as the engines call them: every tensor stays on the device
    # the batch and the model were moved to (the learner moves its batches to its own device).
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from instructray.actors.learner.engine import PolicyLogprobs, TokenValues, engine_inputs

    def on_meta(cls, path, **kwargs):
        model = cls.from_pretrained(path, attn_implementation="eager", **kwargs)
        return model.to("meta")

    policy = PolicyLogprobs(on_meta(AutoModelForCausalLM, tiny_policy), chunk_size=2)
    critic = TokenValues(on_meta(AutoModelForSequenceClassification, tiny_reward, num_labels=1))
    inputs = engine_inputs(batch().to("meta"))
    seen_policy, seen_critic = devices_seen(policy), devices_seen(critic)  # filled as they run
    logprobs, entropy = policy(*inputs, with_entropy=True)
    values = critic(*inputs)
    assert seen_policy == seen_critic == {"meta"}
    for out in (logprobs, entropy, values):
        assert (out.device.type, out.shape) == ("meta", (2, 3))
