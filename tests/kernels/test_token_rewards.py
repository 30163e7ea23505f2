import math

import pytest
import torch
from torch.testing import assert_close

from instructray.kernels import compute_token_rewards, last_token_index

F64 = torch.float64


def random_case(seed, batch=5, length=7):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, generator=gen, dtype=F64) * 3
    logprobs = -torch.rand(batch, length, generator=gen, dtype=F64) * 3
    ref_logprobs = -torch.rand(batch, length, generator=gen, dtype=F64) * 3
    mask = torch.rand(batch, length, generator=gen) > 0.35  # holes anywhere
    mask[0] = False  # one empty row
    return scores, logprobs, ref_logprobs, mask


def loop_reference(scores, logprobs, ref_logprobs, mask, kl_coef, estimator, score_clip):
    batch, length = logprobs.shape
    rewards = [[0.0] * length for _ in range(batch)]
    kls = [[0.0] * length for _ in range(batch)]
    for b in range(batch):
        last = None
        for t in range(length):
            if not mask[b, t]:
                continue
            log_ratio = logprobs[b, t].item() - ref_logprobs[b, t].item()
            kl = {
                "k1": log_ratio,
                "k2": 0.5 * log_ratio**2,
                "k3": math.exp(-log_ratio) - 1 + log_ratio,
            }[estimator]
            kls[b][t] = kl
            rewards[b][t] = -kl_coef * kl
            last = t
        if last is not None:
            score = scores[b].item()
            if score_clip is not None:
                score = min(max(score, -score_clip), score_clip)
            rewards[b][last] += score
    return torch.tensor(rewards, dtype=F64), torch.tensor(kls, dtype=F64)


def test_last_token_index_for_any_mask():
    mask = torch.tensor(
        [
            [1, 1, 1, 0, 0],  # right padding -> 2
            [0, 0, 1, 1, 1],  # left padding -> 4
            [0, 1, 0, 1, 0],  # holes -> 3
            [0, 0, 0, 0, 0],  # empty -> -1
        ]
    )
    assert last_token_index(mask).tolist() == [2, 4, 3, -1]
    assert last_token_index(mask.bool()).tolist() == [2, 4, 3, -1]


def test_token_rewards_hand_computed():
    scores = torch.tensor([2.0, -1.0], dtype=F64)
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -1.0, -2.0]], dtype=F64)
    ref_logprobs = torch.tensor([[-1.5, -2.0, -0.25], [-1.0, -1.2, -0.1]], dtype=F64)
    mask = torch.tensor([[1, 1, 1], [0, 1, 0]], dtype=F64)
    rewards, kl = compute_token_rewards(scores, logprobs, ref_logprobs, mask, kl_coef=0.1)
    # row 0: kl = [0.5, 0, -0.25]; rewards = -0.1 * kl + [0, 0, 2] = [-0.05, 0, 2.025]
    # row 1: kl = [0, 0.2, 0] (masked tokens zeroed); rewards = [0, -0.02 - 1, 0]
    assert_close(
        kl, torch.tensor([[0.5, 0.0, -0.25], [0.0, 0.2, 0.0]], dtype=F64), atol=1e-12, rtol=0
    )
    expected = torch.tensor([[-0.05, 0.0, 2.025], [0.0, -1.02, 0.0]], dtype=F64)
    assert_close(rewards, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    "estimator,score_clip", [("k1", None), ("k2", 1.0), ("k3", None), ("k3", 0.5)]
)
def test_token_rewards_match_loop_reference(estimator, score_clip):
    scores, logprobs, ref_logprobs, mask = random_case(seed=3)
    rewards, kl = compute_token_rewards(
        scores, logprobs, ref_logprobs, mask, 0.05, estimator, score_clip
    )
    ref_rewards, ref_kl = loop_reference(
        scores, logprobs, ref_logprobs, mask, 0.05, estimator, score_clip
    )
    assert_close(rewards, ref_rewards, atol=1e-12, rtol=0)
    assert_close(kl, ref_kl, atol=1e-12, rtol=0)


def test_token_rewards_masked_positions_change_nothing():
    scores, logprobs, ref_logprobs, mask = random_case(seed=4)
    base = compute_token_rewards(scores, logprobs, ref_logprobs, mask, 0.1, "k3")
    for garbage in (50.0, float("nan")):
        perturbed = compute_token_rewards(
            scores,
            logprobs.masked_fill(~mask, garbage),
            ref_logprobs.masked_fill(~mask, -garbage),
            mask,
            0.1,
            "k3",
        )
        assert torch.equal(perturbed[0], base[0]) and torch.equal(perturbed[1], base[1])


def test_score_clip_and_empty_rows():
    scores = torch.tensor([5.0, -5.0, 7.0], dtype=F64)
    zeros = torch.zeros(3, 2, dtype=F64)
    mask = torch.tensor([[1, 1], [1, 0], [0, 0]])
    rewards, _ = compute_token_rewards(scores, zeros, zeros, mask, 0.1, score_clip=2.0)
    # clipped to [-2, 2] on the last valid token; the empty row gets nothing
    assert rewards.tolist() == [[0.0, 2.0], [-2.0, 0.0], [0.0, 0.0]]
    with pytest.raises(ValueError, match="score_clip"):
        compute_token_rewards(scores, zeros, zeros, mask, 0.1, score_clip=0.0)
