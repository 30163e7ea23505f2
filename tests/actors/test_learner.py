"""The DeepSpeed learner on real Ray and real DeepSpeed (gloo, 2 ranks) with tiny models.

Two groups live for the whole module (ZeRO-2 and ZeRO-3); tests that train change their weights,
so the ones that compare with the untouched policy folder come first in each group.
"""

from __future__ import annotations

import math

import pytest
import ray
import safetensors.torch
import torch
from testdata import learner_config
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from instructray.actors.learner.engine import _optimizer_config, deepspeed_config, warmup_factor
from instructray.actors.learner.group import LearnerGroup
from instructray.actors.remote import RemoteError
from instructray.actors.sequences import (
    Experience,
    SequenceBatch,
    make_sequence_batch,
    response_logprobs,
)
from instructray.kernels import compute_gae, masked_whiten, policy_loss, value_loss
from instructray.orchestrator.config import load_config

TIMEOUT_S = 300
TEMPERATURE = 0.7
METRIC_KEYS = {
    "policy/loss",
    "policy/clipfrac",
    "policy/approx_kl",
    "value/loss",
    "value/clipfrac",
    "entropy/mean",
    "policy/grad_norm",
    "value/grad_norm",
}


def _config(policy: str, reward: str, *overrides: str):
    return learner_config(
        policy,
        reward,
        "--learner.lr=1e-3",
        "--learner.critic_lr=1e-3",
        "--reference.logprob_chunk_size=7",  # several chunks per micro-batch
        f"--run.timeout_s={TIMEOUT_S}",
        *overrides,
    )


def _pairs(n: int, seed: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 7, (n, 2), generator=g).tolist()
    prompts = [torch.randint(5, 300, (p,), generator=g).tolist() for p, _ in lengths]
    responses = [torch.randint(5, 300, (r,), generator=g).tolist() for _, r in lengths]
    return prompts, responses


def _hf_logprobs(model, prompts, responses, temperature=1.0) -> list[torch.Tensor]:
    """One unpadded fp32 forward per row: log-probs of the response tokens."""
    out = []
    with torch.no_grad():
        for p, r in zip(prompts, responses, strict=True):
            logits = model(torch.tensor([p + r])).logits[0, len(p) - 1 : len(p) - 1 + len(r)]
            logprobs = torch.log_softmax(logits / temperature, -1)  # (len(r), V)
            out.append(logprobs.gather(-1, torch.tensor(r)[:, None])[:, 0])
    return out


def _equal_length_batch(n: int, seed: int, response_len: int = 5) -> SequenceBatch:
    prompts, _ = _pairs(n, seed)
    g = torch.Generator().manual_seed(seed + 100)
    responses = torch.randint(5, 300, (n, response_len), generator=g).tolist()
    return make_sequence_batch(prompts, responses, pad_id=1)


def _plain_grad_norm(
    folder: str, batch: SequenceBatch, advantages, temperature=1.0, weights=None
) -> float:
    """Norm of the policy-loss gradient at ratio 1: one plain fp32 backward over all rows, with
    the folder's weights or the given (exported) ones.

    With equal-length responses every micro-batch's token mean weighs the same, so the learner's
    mean over accumulation steps and ranks is this one token mean over all rows.
    """
    model = AutoModelForCausalLM.from_pretrained(folder)
    if weights is not None:
        model.load_state_dict(weights, strict=False)  # lm_head is tied to the embeddings
    logprobs = response_logprobs(model, batch, temperature=temperature)  # (B, R)
    loss, _ = policy_loss(logprobs, logprobs.detach(), advantages, batch.response_mask, 0.2)
    loss.backward()
    return math.sqrt(sum(p.grad.double().pow(2).sum().item() for p in model.parameters()))


def _experience(batch: SequenceBatch, out: dict[str, torch.Tensor], seed: int) -> Experience:
    g = torch.Generator().manual_seed(seed)
    mask = batch.response_mask
    return Experience(
        batch,
        old_logprobs=out["old_logprobs"],
        old_values=out["values"],
        advantages=torch.randn(mask.shape, generator=g) * mask,
        returns=torch.randn(mask.shape, generator=g) * mask,
    )


def _export(group: LearnerGroup) -> dict[str, torch.Tensor]:
    return safetensors.torch.load(ray.get(group.export_weights(), timeout=TIMEOUT_S))


def _group(policy: str, reward: str, *overrides: str):
    group = LearnerGroup(_config(policy, reward, *overrides))
    yield group
    group.shutdown()


@pytest.fixture(scope="module")
def zero2(ray_local, tiny_policy, tiny_reward):
    # 8 rows -> 4 per rank = one minibatch of 2 micro-batches: one train call is one step.
    yield from _group(
        tiny_policy,
        tiny_reward,
        "--learner.zero_stage=2",
        "--learner.micro_batch_size=2",
        "--ppo.minibatch_size=4",
        f"--rollout.temperature={TEMPERATURE}",  # old_logprobs use it; probes do not
    )


@pytest.fixture(scope="module")
def zero3(ray_local, tiny_policy, tiny_reward):
    # Minibatches of 2 rows per rank, as 2 accumulated micro-batches of 1.
    yield from _group(
        tiny_policy,
        tiny_reward,
        "--learner.zero_stage=3",
        "--learner.micro_batch_size=1",
        "--ppo.minibatch_size=2",
    )


@pytest.fixture(scope="module")
def zero0(ray_local, tiny_policy, tiny_reward):
    # Plain data parallel: the one DeepSpeed path whose non-finite skip is ours (fp32).
    yield from _group(
        tiny_policy,
        tiny_reward,
        "--learner.zero_stage=0",
        "--learner.micro_batch_size=2",
        "--ppo.minibatch_size=4",
    )


# ---------------------------------------------------------------- config (no Ray)


def test_deepspeed_config_stages_offload_and_precision():
    learner = load_config(None, ["--learner.zero_stage=3", "--learner.offload=true"]).learner
    ds = deepspeed_config(learner, micro_batch_size=2, grad_accum=4, dtype="bfloat16")
    assert ds["train_micro_batch_size_per_gpu"] == 2 and ds["gradient_accumulation_steps"] == 4
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    assert ds["gradient_clipping"] == learner.max_grad_norm
    learner.zero_stage = 0
    with pytest.raises(ValueError, match="offload needs learner.zero_stage >= 1"):
        deepspeed_config(learner, 1, 1, "float32")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="float16 trains only on GPU"):
            deepspeed_config(learner, 1, 1, "float16")


@pytest.mark.parametrize("on_gpu", [False, True])
def test_without_offload_deepspeed_builds_torchs_adamw_fused_on_gpu(on_gpu):
    # Nothing to compile at a run's start (DeepSpeed's FusedAdam is built against the node's
    # CUDA toolkit on first use): DeepSpeed's own choice, given the config, is torch's AdamW.
    from deepspeed.runtime.engine import DeepSpeedEngine

    learner = load_config(None, []).learner
    params = dict(_optimizer_config(learner, lr=1e-3, on_gpu=on_gpu)["params"])
    # The torch_adam branch reads nothing of the engine: an unbound call shows DeepSpeed's pick.
    cls, extra = DeepSpeedEngine.get_optimizer_configuration(None, params, True)
    assert cls is torch.optim.AdamW
    opt = cls([torch.nn.Parameter(torch.ones(3))], **params, **extra)
    assert opt.defaults["fused"] is (True if on_gpu else None)
    assert opt.defaults["lr"] == 1e-3 and opt.defaults["eps"] == learner.adam_eps
    offload = load_config(None, ["--learner.zero_stage=2", "--learner.offload=true"]).learner
    assert "torch_adam" not in _optimizer_config(offload, lr=1e-3, on_gpu=on_gpu)["params"]


def test_warmup_factor_reaches_full_lr_after_warmup_steps():
    # warmup 3: optimizer steps 0, 1, 2 use lr x 1/3, 2/3, 3/3; later steps the full lr.
    assert [warmup_factor(s, 3) for s in range(5)] == [1 / 3, 2 / 3, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0


# ---------------------------------------------------------------- ZeRO-2


def test_logprobs_and_values_equal_transformers_forwards(zero2, tiny_policy, tiny_reward):
    prompts, responses = _pairs(7)  # 7 rows: uneven over 2 ranks, padded and trimmed
    batch = make_sequence_batch(prompts, responses, pad_id=1)
    out = zero2.logprobs_and_values(batch)
    assert out["old_logprobs"].shape == out["values"].shape == batch.response_mask.shape
    assert out["old_logprobs"].dtype == torch.float32
    policy = AutoModelForCausalLM.from_pretrained(tiny_policy).eval()
    critic = AutoModelForSequenceClassification.from_pretrained(tiny_reward).eval()
    for i, want in enumerate(_hf_logprobs(policy, prompts, responses, TEMPERATURE)):
        torch.testing.assert_close(out["old_logprobs"][i, : len(want)], want, atol=1e-5, rtol=0)
    with torch.no_grad():  # the critic starts as the reward model: its per-token scores
        for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
            hidden = critic.model(torch.tensor([p + r])).last_hidden_state[0]
            want = critic.score(hidden).squeeze(-1)[len(p) - 1 : len(p) - 1 + len(r)]
            torch.testing.assert_close(out["values"][i, : len(r)], want, atol=1e-5, rtol=0)


def test_probe_logprobs_equal_transformers_forward(zero2, tiny_policy):
    prompts, responses = _pairs(3, seed=1)
    sequences = [p + r for p, r in zip(prompts, responses, strict=True)]
    got = zero2.probe_logprobs(sequences)
    policy = AutoModelForCausalLM.from_pretrained(tiny_policy).eval()
    want = _hf_logprobs(policy, [s[:1] for s in sequences], [s[1:] for s in sequences])
    assert [len(g) for g in got] == [len(s) - 1 for s in sequences]
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(torch.tensor(g), w, atol=1e-5, rtol=0)


def test_export_has_hf_names_and_the_folder_weights(zero2, tiny_policy):
    exported = _export(zero2)
    hf = AutoModelForCausalLM.from_pretrained(tiny_policy).state_dict()
    assert "model.layers.0.self_attn.q_proj.weight" in exported
    # Tied lm_head is left out (vLLM and transformers re-tie it); everything else is there.
    assert set(exported) == set(hf) - {"lm_head.weight"}
    for name, tensor in exported.items():
        torch.testing.assert_close(tensor, hf[name], atol=0, rtol=0)


def test_train_steps_once_and_changes_weights(zero2, tiny_policy):
    batch = _equal_length_batch(8, seed=2)
    before = _export(zero2)
    exp = _experience(batch, zero2.logprobs_and_values(batch), seed=3)
    metrics = zero2.train(exp)
    assert METRIC_KEYS <= set(metrics), metrics
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    # The only minibatch of epoch 0 sees the weights that wrote old_logprobs: ratio 1.
    assert metrics["policy/clipfrac"] == 0.0
    assert metrics["policy/approx_kl"] < 1e-8
    assert 0 < metrics["entropy/mean"] <= math.log(len(before["model.embed_tokens.weight"]))
    # Accumulated over 2 micro-batches and averaged over 2 ranks = one backward of all rows.
    want = _plain_grad_norm(tiny_policy, batch, exp.advantages, TEMPERATURE)
    assert metrics["policy/grad_norm"] == pytest.approx(want, rel=1e-4)
    after = _export(zero2)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert "model.layers.0.self_attn.q_proj.weight" in changed
    # The same rollout again: now the policy has moved away from old_logprobs.
    again = zero2.train(exp)
    assert again["policy/approx_kl"] > 1e-6


def test_train_from_token_rewards_runs_gae_on_the_critics_own_forward(zero2, tiny_policy):
    # ppo.old_values = train: the driver sends token rewards, not values and advantages. One
    # minibatch per rank, so the critic's training forward sees the rollout-time weights.
    batch = _equal_length_batch(8, seed=6)
    mask = batch.response_mask
    out = zero2.logprobs_and_values(batch)  # what a rollout-time forward would give
    rewards = torch.randn(mask.shape, generator=torch.Generator().manual_seed(7)) * mask
    advantages, returns = compute_gae(rewards, out["values"], mask, gamma=1.0, lam=0.95)
    whitened = masked_whiten(advantages, mask)  # over all 8 rows, though each rank holds 4
    want_value_loss, _ = value_loss(out["values"], out["values"], returns, mask, 0.2)
    want_norm = _plain_grad_norm(tiny_policy, batch, whitened, TEMPERATURE, _export(zero2))
    metrics = zero2.train(Experience(batch, old_logprobs=out["old_logprobs"], rewards=rewards))
    assert metrics["value/loss"] == pytest.approx(want_value_loss.item(), rel=1e-4)
    assert metrics["value/clipfrac"] == 0.0
    assert metrics["policy/grad_norm"] == pytest.approx(want_norm, rel=1e-4)
    assert metrics["policy/approx_kl"] < 1e-8


def test_remote_error_names_phase_and_rank(zero2):
    prompts, responses = _pairs(4, seed=4)  # 2 rows per rank, minibatch 4
    batch = make_sequence_batch(prompts, responses, pad_id=1)
    exp = _experience(batch, zero2.logprobs_and_values(batch), seed=5)
    with pytest.raises(
        RemoteError, match=r"learner train: rank \d failed: ValueError: .*got 2 rows"
    ):
        zero2.train(exp)


def test_save_pretrained_loads_with_the_exported_weights(zero2, tmp_path):
    exported = _export(zero2)
    path = tmp_path / "final"
    zero2.save_pretrained(str(path))
    zero2.save_pretrained(str(path))  # over an existing folder
    assert [p.name for p in tmp_path.iterdir()] == ["final"]  # no temp folders left behind
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    state = model.state_dict()
    for name, tensor in exported.items():
        torch.testing.assert_close(state[name], tensor, atol=0, rtol=0)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    # The learner's forward and the saved model agree (what weight sync verifies).
    prompts, responses = _pairs(2, seed=6)
    sequences = [p + r for p, r in zip(prompts, responses, strict=True)]
    want = _hf_logprobs(model, [s[:1] for s in sequences], [s[1:] for s in sequences])
    for g, w in zip(zero2.probe_logprobs(sequences), want, strict=True):
        torch.testing.assert_close(torch.tensor(g), w, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- ZeRO-3


def test_zero3_export_gathers_full_tensors(zero3, tiny_policy):
    exported = _export(zero3)
    hf = AutoModelForCausalLM.from_pretrained(tiny_policy).state_dict()
    assert set(exported) == set(hf) - {"lm_head.weight"}
    for name, tensor in exported.items():
        torch.testing.assert_close(tensor, hf[name], atol=0, rtol=0)


def test_zero3_gradients_equal_a_plain_backward(zero3, tiny_policy):
    # 2 rows per rank: one step. The tied embedding / lm head is partitioned and gathered for
    # the chunked log-probs in forward and backward; its gradient must be complete.
    batch = _equal_length_batch(4, seed=7)
    out = zero3.logprobs_and_values(batch)
    metrics = zero3.train(_experience(batch, out, seed=8))
    assert METRIC_KEYS <= set(metrics), metrics
    assert metrics["policy/clipfrac"] == 0.0
    advantages = _experience(batch, out, seed=8).advantages
    want = _plain_grad_norm(tiny_policy, batch, advantages)
    assert metrics["policy/grad_norm"] == pytest.approx(want, rel=1e-4)


def test_zero3_trains_and_exports_trained_weights(zero3, tiny_policy):
    prompts, responses = _pairs(8, seed=9)  # 4 rows per rank: 2 minibatches, 2 steps
    batch = make_sequence_batch(prompts, responses, pad_id=1)
    before = _export(zero3)
    metrics = zero3.train(_experience(batch, zero3.logprobs_and_values(batch), seed=10))
    assert METRIC_KEYS <= set(metrics), metrics
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    after = _export(zero3)
    policy = AutoModelForCausalLM.from_pretrained(tiny_policy).eval()
    shapes = {k: v.shape for k, v in policy.state_dict().items() if k != "lm_head.weight"}
    assert {k: v.shape for k, v in after.items()} == shapes
    assert not torch.equal(after["model.embed_tokens.weight"], before["model.embed_tokens.weight"])
    # The partitioned forward agrees with a plain forward of the gathered weights.
    policy.load_state_dict(after, strict=False)
    sequences = [p + r for p, r in zip(prompts[:2], responses[:2], strict=True)]
    want = _hf_logprobs(policy, [s[:1] for s in sequences], [s[1:] for s in sequences])
    for g, w in zip(zero3.probe_logprobs(sequences), want, strict=True):
        torch.testing.assert_close(torch.tensor(g), w, atol=1e-5, rtol=0)


def test_call_past_its_timeout_names_phase_and_ranks(zero3):
    prompts, responses = _pairs(8, seed=11)
    batch = make_sequence_batch(prompts, responses, pad_id=1)
    exp = _experience(batch, zero3.logprobs_and_values(batch), seed=12)
    zero3.timeout_s = 0.05  # a train call takes seconds
    try:
        with pytest.raises(
            RemoteError, match=r"learner train: rank 0, rank 1 did not answer within"
        ):
            zero3.train(exp)
    finally:
        zero3.timeout_s = TIMEOUT_S
    # The late call still finishes; the group answers again afterwards.
    assert len(zero3.probe_logprobs([[5, 6, 7]])[0]) == 2


# ---------------------------------------------------------------- non-finite numbers


@pytest.mark.parametrize("stage", ["zero0", "zero2", "zero3"])
def test_nonfinite_loss_skips_the_optimizer_step_on_every_rank(request, stage):
    group = request.getfixturevalue(stage)
    batch = _equal_length_batch(2 * group.cfg.ppo.minibatch_size, seed=11)  # one step per rank
    exp = _experience(batch, group.logprobs_and_values(batch), seed=12)
    exp.advantages[0, 0] = float("nan")  # a token of rank 0's first row only
    before = _export(group)
    metrics = group.train(exp)
    # Means over the ranks: 1 = every rank skipped; the critic (no advantages) stepped.
    assert metrics["policy/optimizer_steps"] == 1
    assert metrics["policy/skipped_steps"] == 1
    assert metrics["value/skipped_steps"] == 0
    assert "policy/grad_norm" not in metrics
    after = _export(group)
    for name, tensor in before.items():
        assert torch.equal(tensor, after[name]), name
    # Nothing of the bad step lingers: a finite batch steps from the same weights.
    exp.advantages[0, 0] = 0.0
    metrics = group.train(exp)
    assert metrics["policy/skipped_steps"] == 0
    assert stage == "zero0" or math.isfinite(metrics["policy/grad_norm"])  # ZeRO-0 has none
    after = _export(group)
    assert all(torch.isfinite(t).all() for t in after.values())
    assert not torch.equal(after["model.embed_tokens.weight"], before["model.embed_tokens.weight"])
