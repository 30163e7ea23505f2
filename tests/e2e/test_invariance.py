"""One optimizer step does not depend on how its minibatch is cut: real Ray and DeepSpeed (ZeRO-2,
gloo), tiny models, fp32.

The same 8 rows (responses of 1 to 7 tokens, so a token mean and a sequence mean differ) are one
minibatch, trained by one rank with all rows in one micro-batch (the reference), then cut into
micro-batches of 1 and 2 rows, shared by 2 ranks in micro-batches of 1, 2 and 4, and given in
another order. After one optimizer step the policy's and the critic's weights must equal the
reference's within fp32 rounding, for every ppo.loss_agg mode. Each case starts from the same
checkpoint (weights, AdamW state, counters), so only the cut differs.

A loss normalised within each micro-batch (a token mean of its own tokens) fails this: it
re-weighs tokens by the length of their micro-batch: with it, token_mean's weights here differ
by up to 0.18 (the seq_* modes, means of equal-sized groups, were invariant already).

SFT and the reward model hold the same way: one step on 8 examples by one rank equals the step
by two ranks dealt 1 + 7 and (in reverse order) 5 + 3 of them, since each rank's loss is its
tokens' (SFT) or elements' (RM) sum over the step's count across ranks.
"""

from __future__ import annotations

import dataclasses

import pytest
import ray
import safetensors.torch
import torch
from supervised_ranks import SupervisedRank

from instructray.actors.learner.group import LearnerGroup
from instructray.actors.learner.ranks import free_port
from instructray.actors.sequences import Experience, make_sequence_batch
from instructray.kernels import LOSS_AGG_MODES
from instructray.orchestrator.config import load_config
from instructray.orchestrator.data import Demonstration, Ranking

pytestmark = pytest.mark.e2e

TIMEOUT_S = 300
ROWS = 8
# AdamW's first step is lr x g / (|g| + eps): with eps 1 it is about lr x g, so the weights
# show the gradient itself. (With eps 1e-8 it is lr x sign(g), which turns rounding of a
# gradient near 0 into a difference of up to 2 x lr for a few weights, and hides how much a
# wrongly weighted gradient differs elsewhere.)
LR = 1.0
ADAM_EPS = 1.0
ATOL = 1e-6  # a few fp32 ulps of a weight near 1 (norm weights)

# (ranks, micro-batch size, rows reversed, token budget); the reference is (1, 8, False, 0). With
# a token budget (learner.max_tokens_per_batch) the rows go by length into micro-batches of
# uneven sizes (the 2 ranks' counts made equal): a budget of 12 holds 1 to 3 of these rows.
CUTS = [
    (1, 1, False, 0),
    (1, 2, False, 0),
    (1, 8, True, 0),
    (2, 1, False, 0),
    (2, 2, False, 0),
    (2, 4, True, 0),
    (1, 8, False, 12),
    (2, 4, True, 12),
]


def _config(policy: str, reward: str, ranks: int):
    return load_config(
        None,
        [
            f"--model.policy={policy}",
            f"--model.reward={reward}",
            "--model.dtype=float32",
            f"--learner.num_ranks={ranks}",
            "--learner.zero_stage=2",
            f"--learner.micro_batch_size={ROWS // ranks}",
            f"--ppo.minibatch_size={ROWS // ranks}",
            f"--learner.lr={LR}",
            f"--learner.critic_lr={LR}",
            f"--learner.adam_eps={ADAM_EPS}",
            "--learner.max_grad_norm=1e9",  # no clipping: the gradient as it is
            "--ppo.entropy_coef=0.01",  # its term is aggregated like the losses
            f"--run.timeout_s={TIMEOUT_S}",
        ],
    )


def _experience(group: LearnerGroup) -> Experience:
    """8 rows with ragged responses; rollout-time log-probs and values from the group."""
    g = torch.Generator().manual_seed(7)
    prompts = [torch.randint(5, 300, (int(n),), generator=g).tolist() for n in [3, 1, 4, 2] * 2]
    responses = [
        torch.randint(5, 300, (n,), generator=g).tolist() for n in [1, 7, 2, 6, 3, 5, 4, 7]
    ]
    batch = make_sequence_batch(prompts, responses, pad_id=1)
    out = group.logprobs_and_values(batch)
    mask = batch.response_mask
    return Experience(
        batch,
        old_logprobs=out["old_logprobs"] + 0.1 * torch.randn(mask.shape, generator=g) * mask,
        old_values=out["values"],
        advantages=torch.randn(mask.shape, generator=g) * mask,
        returns=torch.randn(mask.shape, generator=g) * mask,
    )


def _reversed(experience: Experience) -> Experience:
    rows = torch.arange(experience.batch.input_ids.shape[0] - 1, -1, -1)
    flipped = {k: v[rows] for k, v in experience.tensors().items()}
    return dataclasses.replace(experience, batch=experience.batch.select(rows), **flipped)


def _weights(group: LearnerGroup) -> dict[str, torch.Tensor]:
    out = {}
    for model in ("policy", "critic"):
        state = safetensors.torch.load(ray.get(group.export_weights(model), timeout=TIMEOUT_S))
        out.update({f"{model}/{k}": v for k, v in state.items()})
    return out


def _weights_at(group: LearnerGroup, start: str) -> dict[str, torch.Tensor]:
    group.load_checkpoint(start)
    return _weights(group)


def _one_step(
    group, start, experience, micro: int, mode: str, metrics: dict | None = None, budget: int = 0
) -> dict[str, torch.Tensor]:
    group.load_checkpoint(start)
    rows_per_rank = ROWS // len(group.actors)
    group.update_settings(
        {
            "learner.micro_batch_size": micro,
            "learner.max_tokens_per_batch": budget,
            "ppo.minibatch_size": rows_per_rank,
            "ppo.loss_agg": mode,
        }
    )
    trained = group.train(experience)
    assert trained["policy/optimizer_steps"] == trained["value/optimizer_steps"] == 1
    if metrics is not None:
        metrics.update(trained)
    return _weights(group)


@pytest.fixture(scope="module")
def groups(ray_local, tiny_policy, tiny_reward, tmp_path_factory):
    """A 1-rank and a 2-rank group from the same weights, each with a checkpoint of its start."""
    made = {}
    try:
        for ranks in (1, 2):
            group = LearnerGroup(_config(tiny_policy, tiny_reward, ranks))
            start = str(tmp_path_factory.mktemp(f"start-{ranks}"))
            group.save_checkpoint(start)
            made[ranks] = (group, start)
        yield made
    finally:
        for group, _ in made.values():
            group.shutdown()


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_one_step_is_the_same_however_the_minibatch_is_cut(groups, mode):
    one, one_start = groups[1]
    before = _weights_at(one, one_start)
    experience = _experience(one)  # at the start's weights, as every case begins
    want = _one_step(one, one_start, experience, ROWS, mode)
    moved = max((want[k] - before[k]).abs().max().item() for k in want)
    assert moved > 1e3 * ATOL  # the step moved the weights: equality below is not trivial
    for ranks, micro, flipped, budget in CUTS:
        group, start = groups[ranks]
        rows = _reversed(experience) if flipped else experience
        got = _one_step(group, start, rows, micro, mode, budget=budget)
        worst = max(want, key=lambda k: (got[k] - want[k]).abs().max().item())
        gap = (got[worst] - want[worst]).abs().max().item()
        assert gap <= ATOL, (mode, ranks, micro, flipped, budget, worst, gap)


@pytest.mark.parametrize("ranks,micro", [(1, 4), (2, 2)])
def test_old_logprobs_of_the_training_forward_give_the_step_a_forward_before_it_gives(
    groups, ranks, micro
):
    """ppo.old_logprobs train: where the policy steps once per batch, the experience comes
    without old log-probs and the training forward's own (detached) stand in, TIS weights
    included. The step equals the one on a learner forward's log-probs taken before it (and
    the TIS weights computed from them), and the log-probs it returns are that forward's."""
    group, start = groups[ranks]
    experience = _experience(group)
    group.load_checkpoint(start)
    before = group.logprobs_and_values(experience.batch, with_values=False)["old_logprobs"]
    mask = experience.batch.response_mask
    g = torch.Generator().manual_seed(5)
    engine = before + 0.5 * torch.randn(mask.shape, generator=g) * mask  # the engines' gap
    cap = load_config(None, []).ppo.tis_cap
    # by hand: min(pi_old / pi_engine, cap) on response tokens, 0 on padding
    tis = torch.where(mask.bool(), torch.exp(before - engine).clamp(max=cap), 0.0)
    assert 0 < int((tis == cap).sum()) < int(mask.sum())  # the cap binds on some tokens
    given = dataclasses.replace(experience, old_logprobs=before, tis_weights=tis)
    want = _one_step(group, start, given, micro, "token_mean")
    own = dataclasses.replace(experience, old_logprobs=None, rollout_logprobs=engine)
    trained: dict = {}
    got = _one_step(group, start, own, micro, "token_mean", trained)
    worst = max(want, key=lambda k: (got[k] - want[k]).abs().max().item())
    assert (got[worst] - want[worst]).abs().max().item() <= ATOL, worst
    assert torch.allclose(trained["old_logprobs"] * mask, before * mask, atol=1e-5)
    assert trained["policy/approx_kl"] == 0.0  # pi / pi_old is 1 exactly


# ---------------------------------------------------------------- SFT and the reward model

# How the 8 examples of one supervised step are dealt out: [examples of rank 0, of rank 1, ...]
DEALS = [[list(range(8))], [[0], list(range(1, 8))], [[7, 6, 5, 4, 3], [2, 1, 0]]]


def _supervised_examples(stage: str) -> list:
    g = torch.Generator().manual_seed(11)

    def ids(n: int) -> list[int]:
        return torch.randint(5, 300, (n,), generator=g).tolist()

    if stage == "sft":  # responses of 1 to 9 tokens: a per-rank token mean would re-weigh them
        return [
            Demonstration(ids(2 + i % 3), ids(n)) for i, n in enumerate([1, 9, 2, 8, 3, 7, 4, 6])
        ]

    # K of 2 to 5: elements of unequal pair counts, some with ties; the first all tied (it
    # counts for nothing, also on the rank that holds it alone)
    def groups(i: int, k: int) -> list[list[int]]:
        order = torch.randperm(k, generator=g).tolist()
        if i == 0:
            return [order]
        if i % 2 and k > 2:  # the 2nd and 3rd tie
            return [[order[0]], order[1:3], *[[j] for j in order[3:]]]
        return [[j] for j in order]

    return [
        Ranking(ids(3), [ids(2 + j % 3) for j in range(k)], groups(i, k))
        for i, k in enumerate([2, 5, 3, 4, 2, 3, 5, 4])
    ]


def _supervised_step(cfg, stage, model_path, pad_id, deal, examples):
    """(weights before, weights after) one step of ranks given examples as dealt."""
    port = free_port()
    ranks = [
        SupervisedRank.remote(cfg, stage, model_path, pad_id, r, len(deal), port)
        for r in range(len(deal))
    ]
    try:
        ray.get([r.ready.remote() for r in ranks], timeout=TIMEOUT_S)
        before = ray.get([r.weights.remote() for r in ranks], timeout=TIMEOUT_S)[0]
        shares = [[examples[i] for i in part] for part in deal]
        ray.get(
            [r.step.remote(part) for r, part in zip(ranks, shares, strict=True)], timeout=TIMEOUT_S
        )
        after = ray.get([r.weights.remote() for r in ranks], timeout=TIMEOUT_S)[0]
        return safetensors.torch.load(before), safetensors.torch.load(after)
    finally:
        for r in ranks:
            ray.kill(r)


@pytest.mark.parametrize("stage", ["sft", "rm"])
def test_a_supervised_step_is_the_same_however_its_examples_are_dealt_out(
    ray_local, tiny_policy, tiny_reward, tok, stage
):
    model_path = tiny_policy if stage == "sft" else tiny_reward
    cfg = load_config(
        None,
        [
            f"--model.policy={tiny_policy}",
            "--model.dtype=float32",
            "--learner.zero_stage=2",
            f"--sft.lr={LR}",
            f"--rm.lr={LR}",
            f"--learner.adam_eps={ADAM_EPS}",
            "--learner.max_grad_norm=1e9",
            f"--run.timeout_s={TIMEOUT_S}",
        ],
    )
    examples = _supervised_examples(stage)
    pad_id = tok.pad_token_id
    before, want = _supervised_step(cfg, stage, model_path, pad_id, DEALS[0], examples)
    moved = max((want[k] - before[k]).abs().max().item() for k in want)
    assert moved > 1e3 * ATOL  # the step moved the weights: equality below is not trivial
    for deal in DEALS[1:]:
        _, got = _supervised_step(cfg, stage, model_path, pad_id, deal, examples)
        worst = max(want, key=lambda k: (got[k] - want[k]).abs().max().item())
        gap = (got[worst] - want[worst]).abs().max().item()
        assert gap <= ATOL, (stage, deal, worst, gap)
