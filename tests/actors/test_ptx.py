"""PPO-ptx (InstructGPT eq. 2) in the learner, on real Ray and DeepSpeed (ZeRO-2, gloo, 2 ranks).

With every advantage 0 the policy-gradient term has no gradient, so one optimizer step moves the
weights by gamma x the gradient of the pretraining batches' LM loss alone: computed here by hand
with a plain transformers forward and backward on the texts each rank draws, averaged over the
ranks, and held against DeepSpeed's step. AdamW's first step with eps 1 is lr x g / (|g| + 1),
which shows the gradient itself (tests/e2e/test_invariance.py explains the choice).
"""

from __future__ import annotations

import pytest
import ray
import safetensors.torch
import torch
from testdata import learner_config
from transformers import AutoModelForCausalLM

from instructray.actors.learner.group import LearnerGroup
from instructray.actors.learner.ptx import Pretraining
from instructray.actors.sequences import Experience, make_sequence_batch

TIMEOUT_S = 300
GAMMA, PTX_BATCH, SEED = 0.5, 3, 5
TEXTS = [[5 + 7 * i + j for j in range(2 + i % 4)] for i in range(6)]  # 2..5 tokens each


@pytest.fixture(scope="module")
def ptx_group(ray_local, tiny_policy, tiny_reward):
    # 8 rows, 4 per rank = one minibatch of 2 micro-batches: DeepSpeed divides by 2, undone.
    cfg = learner_config(
        tiny_policy,
        tiny_reward,
        "--learner.zero_stage=2",
        "--learner.micro_batch_size=2",
        "--ppo.minibatch_size=4",
        "--ppo.estimator=grpo",
        f"--ppo.ptx_coef={GAMMA}",
        "--data.pretrain=tiny://pretrain",
        f"--learner.ptx_batch_size={PTX_BATCH}",
        "--learner.lr=1.0",
        "--learner.adam_eps=1.0",
        "--learner.max_grad_norm=1e9",
        f"--run.seed={SEED}",
        f"--run.timeout_s={TIMEOUT_S}",
    )
    group = LearnerGroup(cfg, pretrain=TEXTS)
    yield group
    group.shutdown()


def _weights(group: LearnerGroup) -> dict[str, torch.Tensor]:
    return safetensors.torch.load(ray.get(group.export_weights(), timeout=TIMEOUT_S))


def _lm_gradient(model_path: str, texts_by_rank: list[list[list[int]]]) -> dict[str, torch.Tensor]:
    """gamma x the gradient of each rank's token-mean NLL of its texts, averaged over ranks."""
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    total = 0.0
    for texts in texts_by_rank:
        nll, tokens = 0.0, 0
        for ids in texts:
            logits = model(torch.tensor([ids])).logits[0, :-1]
            nll = (
                nll - torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None]).sum()
            )
            tokens += len(ids) - 1
        total = total + GAMMA * nll / tokens / len(texts_by_rank)
    total.backward()
    return {name: p.grad for name, p in model.named_parameters()}


def test_draws_are_seeded_by_run_rank_and_train_call():
    def draw(rank: int, call: int) -> list[list[int]]:
        p = Pretraining(TEXTS, PTX_BATCH, SEED, rank)
        p.start(call)
        return p.next_texts()

    assert draw(0, 0) == draw(0, 0)  # a resumed run draws what the first one drew
    assert len({str(draw(r, c)) for r in (0, 1) for c in (0, 1)}) > 1
    with pytest.raises(ValueError, match="data.pretrain"):
        Pretraining([], PTX_BATCH, SEED, 0)


def test_a_step_adds_gamma_times_the_pretraining_lm_gradient(ptx_group, tiny_policy):
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(5, 300, (3,), generator=g).tolist() for _ in range(8)]
    responses = [torch.randint(5, 300, (1 + i % 4,), generator=g).tolist() for i in range(8)]
    batch = make_sequence_batch(prompts, responses, pad_id=1)
    old = ptx_group.logprobs_and_values(batch)["old_logprobs"]
    zeros = torch.zeros_like(old)
    experience = Experience(batch, old_logprobs=old, advantages=zeros, returns=zeros)
    before = _weights(ptx_group)

    metrics = ptx_group.train(experience)

    after = _weights(ptx_group)
    drawn = []
    for rank in range(2):  # what each rank drew in its first train call
        p = Pretraining(TEXTS, PTX_BATCH, SEED, rank)
        p.start(0)
        drawn.append(p.next_texts())
    grads = _lm_gradient(tiny_policy, drawn)
    assert metrics["policy/optimizer_steps"] == 1 and metrics["ptx/loss"] > 0
    worst = 0.0
    for name, grad in grads.items():
        if name not in after:  # tied embeddings: one name exported
            continue
        want = before[name] - grad / (grad.abs() + 1.0)  # lr 1, AdamW's first step, eps 1
        worst = max(worst, (after[name] - want).abs().max().item())
    moved = max((after[k] - before[k]).abs().max().item() for k in after)
    assert moved > 1e-3  # the step moved the weights: the equality is not trivial
    assert worst <= 1e-6, worst
