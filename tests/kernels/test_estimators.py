import math

import pytest
import torch
from torch.testing import assert_close

from instructray.kernels import (
    CRITIC_FREE_ESTIMATORS,
    GROUP_ESTIMATORS,
    compute_gae,
    estimator_advantages,
    group_advantages,
    masked_mean,
    masked_var,
    returns_to_go,
)

F64 = torch.float64
EPS = 1e-6  # estimator_advantages' default
WHITEN_EPS = 1e-8  # masked_whiten's, added to the variance
X = 9.0  # reward on a masked token: never read


def close(actual, expected, atol=1e-12):
    assert_close(actual, torch.as_tensor(expected, dtype=F64), atol=atol, rtol=0)


def hand_case():
    """Two groups of unequal size, interleaved: ids 7 (rows 0, 2, 4) and 3 (rows 1, 3)."""
    rewards = torch.tensor(
        [
            [0.0, 0.0, 1.0, X],  # tokens 0-2: score 1
            [2.0, 5.0, X, X],  # tokens 0-1: score 7
            [1.0, 0.0, 0.0, 2.0],  # all 4 tokens: score 3
            [X, 0.0, 0.0, 5.0],  # left padded: score 5
            [1.0, X, 1.0, X],  # a hole at token 1: score 2
        ],
        dtype=F64,
    )
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [0, 1, 1, 1], [1, 0, 1, 0]])
    return rewards, mask, torch.tensor([7, 3, 7, 3, 7])


def on_tokens(per_row, mask):
    """A per-row value on each of the row's response tokens, 0 elsewhere."""
    return torch.where(mask.bool(), torch.tensor(per_row, dtype=F64)[:, None], 0.0)


def random_case(seed, batch=9, length=7):
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randn(batch, length, generator=gen, dtype=F64)
    mask = torch.rand(batch, length, generator=gen) > 0.3
    mask[0, 1:] = False  # a one-token row
    # Groups of 3, 3, 2 and 1, ids neither sorted nor contiguous, shuffled over the rows.
    ids = torch.tensor([5, 2, 5, 11, 2, 5, 11, 40, 2])[torch.randperm(batch, generator=gen)]
    return rewards, mask, ids


def loop_reference(rewards, mask, ids, estimator, eps=EPS):
    """Our definitions, one row and one token at a time."""
    batch, length = rewards.shape
    valid = [[t for t in range(length) if mask[b, t]] for b in range(batch)]
    scores = [sum(rewards[b, t].item() for t in valid[b]) for b in range(batch)]
    out = torch.zeros(batch, length, dtype=F64)
    for b in range(batch):
        others = [scores[c] for c in range(batch) if ids[c] == ids[b] and c != b]
        group = [scores[b], *others]
        mean = sum(group) / len(group)
        if estimator in ("dr_grpo", "reinforce_pp_baseline"):
            adv = scores[b] - mean
        elif not others:
            adv = 0.0
        elif estimator == "rloo":
            adv = scores[b] - sum(others) / len(others)
        else:  # grpo
            std = math.sqrt(sum((s - mean) ** 2 for s in group) / (len(group) - 1))
            adv = (scores[b] - mean) / (std + eps)
        for i, t in enumerate(valid[b]):
            # reinforce_pp: the sum of the rewards of this and every later valid token
            rest = sum(rewards[b, u].item() for u in valid[b][i:])
            out[b, t] = rest if estimator == "reinforce_pp" else adv
    if estimator.startswith("reinforce_pp"):
        values = [out[b, t].item() for b in range(batch) for t in valid[b]]
        m = sum(values) / len(values)
        var = sum((v - m) ** 2 for v in values) / (len(values) - 1)
        for b in range(batch):
            for t in valid[b]:
                out[b, t] = (out[b, t] - m) / math.sqrt(var + WHITEN_EPS)
    return out


# ---------------------------------------------------------------- hand-computed


def test_grpo_hand_computed():
    rewards, mask, ids = hand_case()
    # group 7: scores 1, 3, 2 -> mean 2; unbiased var ((-1)^2 + 1^2 + 0^2) / 2 = 1, std 1
    # group 3: scores 7, 5 -> mean 6; unbiased var (1^2 + (-1)^2) / 1 = 2, std sqrt(2)
    expected = [-1 / (1 + EPS), 1 / (2**0.5 + EPS), 1 / (1 + EPS), -1 / (2**0.5 + EPS), 0.0]
    close(estimator_advantages(rewards, mask, ids, "grpo"), on_tokens(expected, mask))


def test_dr_grpo_hand_computed():
    rewards, mask, ids = hand_case()
    # s - group mean, no std: 1 - 2, 7 - 6, 3 - 2, 5 - 6, 2 - 2
    expected = [-1.0, 1.0, 1.0, -1.0, 0.0]
    close(estimator_advantages(rewards, mask, ids, "dr_grpo"), on_tokens(expected, mask))


def test_rloo_hand_computed():
    rewards, mask, ids = hand_case()
    # s - mean of the others: 1 - (3 + 2) / 2 = -1.5; 7 - 5 = 2; 3 - (1 + 2) / 2 = 1.5;
    # 5 - 7 = -2; 2 - (1 + 3) / 2 = 0  (= K / (K - 1) x dr_grpo's: 3/2 x -1, 2/1 x 1, ...)
    expected = [-1.5, 2.0, 1.5, -2.0, 0.0]
    close(estimator_advantages(rewards, mask, ids, "rloo"), on_tokens(expected, mask))


def test_reinforce_pp_hand_computed():
    rewards, mask, ids = hand_case()
    # returns-to-go over valid tokens (masked X skipped):
    #   row 0: [0+0+1, 0+1, 1, -]  row 1: [2+5, 5, -, -]  row 2: [1+0+0+2, 2, 2, 2]
    #   row 3: [-, 5, 5, 5]        row 4: [1+1, -, 1, -]
    rtg = torch.tensor(
        [[1, 1, 1, 0], [7, 5, 0, 0], [3, 2, 2, 2], [0, 5, 5, 5], [2, 0, 1, 0]], dtype=F64
    )
    close(returns_to_go(rewards, mask), rtg)
    # 14 tokens, sum 3 + 12 + 9 + 15 + 3 = 42, mean 3; squared deviations
    # 4+4+4 + 16+4 + 0+1+1+1 + 4+4+4 + 1+4 = 52; unbiased var 52 / 13 = 4
    expected = torch.where(mask.bool(), (rtg - 3) / math.sqrt(4 + WHITEN_EPS), 0.0)
    close(estimator_advantages(rewards, mask, ids, "reinforce_pp"), expected)


def test_reinforce_pp_baseline_hand_computed():
    rewards, mask, ids = hand_case()
    # s - group mean (dr_grpo's -1, 1, 1, -1, 0) on 3, 2, 4, 3, 2 tokens: sum -3+2+4-3+0 = 0,
    # mean 0; squares 3 + 2 + 4 + 3 + 0 = 12, unbiased var 12 / 13
    expected = on_tokens([-1.0, 1.0, 1.0, -1.0, 0.0], mask) / math.sqrt(12 / 13 + WHITEN_EPS)
    close(estimator_advantages(rewards, mask, ids, "reinforce_pp_baseline"), expected)


def test_a_group_of_one_gets_zero():
    rewards, mask, _ = hand_case()
    ids = torch.tensor([7, 3, 7, 3, 5])  # row 4 is alone
    # group 7 is now rows 0, 2: scores 1, 3, mean 2, std sqrt(2); group 3 as before
    expected = {
        "grpo": [-1 / (2**0.5 + EPS), 1 / (2**0.5 + EPS), 1 / (2**0.5 + EPS), -1 / (2**0.5 + EPS)],
        "dr_grpo": [-1.0, 1.0, 1.0, -1.0],
        "rloo": [-2.0, 2.0, 2.0, -2.0],  # 1 - 3, 7 - 5, 3 - 1, 5 - 7
        "reinforce_pp_baseline": [-1.0, 1.0, 1.0, -1.0],  # before whitening
    }
    scores = torch.tensor([1.0, 7.0, 3.0, 5.0, 2.0], dtype=F64)
    for name, rows in expected.items():
        close(group_advantages(scores, ids, name), [*rows, 0.0])
    for name in ("grpo", "dr_grpo", "rloo"):
        close(estimator_advantages(rewards, mask, ids, name)[4], [0.0] * 4)
        # a batch of one row: no crash, no NaN, all 0
        close(estimator_advantages(rewards[:1], mask[:1], ids[:1], name), [[0.0] * 4])


# ---------------------------------------------------------------- properties


@pytest.mark.parametrize("estimator", CRITIC_FREE_ESTIMATORS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_loop_reference(estimator, seed):
    rewards, mask, ids = random_case(seed)
    close(
        estimator_advantages(rewards, mask, ids, estimator),
        loop_reference(rewards, mask, ids, estimator),
    )


@pytest.mark.parametrize("estimator", CRITIC_FREE_ESTIMATORS)
def test_masked_tokens_get_zero_and_their_rewards_change_nothing(estimator):
    rewards, mask, ids = random_case(seed=3)
    base = estimator_advantages(rewards, mask, ids, estimator)
    assert torch.all(base[~mask] == 0)
    for garbage in (1e3, float("nan")):
        perturbed = estimator_advantages(rewards.masked_fill(~mask, garbage), mask, ids, estimator)
        assert torch.equal(perturbed, base)


@pytest.mark.parametrize("estimator", CRITIC_FREE_ESTIMATORS)
def test_rows_permuted_give_permuted_advantages(estimator):
    rewards, mask, ids = random_case(seed=4)
    perm = torch.randperm(len(ids), generator=torch.Generator().manual_seed(0))
    base = estimator_advantages(rewards, mask, ids, estimator)
    permuted = estimator_advantages(rewards[perm], mask[perm], ids[perm], estimator)
    close(permuted, base[perm])


@pytest.mark.parametrize("estimator", GROUP_ESTIMATORS)
def test_groups_are_their_ids_only(estimator):
    # The same prompt sampled in two groups (ids 4 and 9) with the same rewards: the kernel
    # sees no text, and the two groups stay separate.
    scores = torch.tensor([1.0, 4.0, 0.0, 2.0, 6.0], dtype=F64)
    ids = torch.tensor([4, 9, 4, 9, 9])
    alone_4 = group_advantages(scores[[0, 2]], ids[[0, 2]], estimator)
    alone_9 = group_advantages(scores[[1, 3, 4]], ids[[1, 3, 4]], estimator)
    together = group_advantages(scores, ids, estimator)
    close(together[[0, 2]], alone_4)
    close(together[[1, 3, 4]], alone_9)
    merged = group_advantages(scores, torch.tensor([4, 4, 4, 4, 4]), estimator)
    assert not torch.allclose(merged, together)
    # Only equality of ids matters, not their values: any relabelling gives the same advantages.
    relabelled = torch.tensor([10**12, -3, 10**12, -3, -3])
    assert torch.equal(group_advantages(scores, relabelled, estimator), together)


def test_returns_to_go_is_gae_with_zero_values_and_lambda_one():
    rewards, mask, _ = random_case(seed=5)
    gae, _ = compute_gae(rewards, torch.zeros_like(rewards), mask, gamma=1.0, lam=1.0)
    close(returns_to_go(rewards, mask), gae)


def test_grpo_groups_have_mean_zero_and_std_one():
    rewards, mask, ids = random_case(seed=6)
    scores = torch.where(mask, rewards, 0.0).sum(-1)
    advantages = group_advantages(scores, ids, "grpo", eps=1e-13)
    for group in ids.unique():
        rows = advantages[ids == group]
        if len(rows) > 1:
            close(rows.mean(), 0.0)
            close(rows.std(), 1.0, atol=1e-12)


@pytest.mark.parametrize("estimator", ["reinforce_pp", "reinforce_pp_baseline"])
def test_whitened_estimators_have_batch_mean_zero_and_variance_one(estimator):
    rewards, mask, ids = random_case(seed=7)
    advantages = estimator_advantages(rewards, mask, ids, estimator)
    close(masked_mean(advantages, mask), 0.0)
    close(masked_var(advantages, mask), 1.0, atol=1e-7)  # var / (var + 1e-8)


def test_bad_estimator_or_ids_are_named():
    rewards, mask, ids = hand_case()
    with pytest.raises(ValueError, match=r"'gae'.*grpo, dr_grpo, rloo.*compute_gae"):
        estimator_advantages(rewards, mask, ids, "gae")
    with pytest.raises(ValueError, match=r"'reinforce_pp'.*grpo, dr_grpo"):
        group_advantages(rewards.sum(-1), ids, "reinforce_pp")
    with pytest.raises(ValueError, match=r"shape \(4,\), scores \(5,\)"):
        estimator_advantages(rewards, mask, ids[:4], "grpo")
    with pytest.raises(ValueError, match="grpo needs eps > 0.*got 0.0"):
        estimator_advantages(rewards, mask, ids, "grpo", eps=0.0)
