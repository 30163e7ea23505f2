import math

import pytest
import torch
from torch.testing import assert_close

from instructray.kernels import (
    LOSS_AGG_MODES,
    aggregate_loss,
    aggregation_count,
    entropy_from_logits,
    policy_loss,
    truncated_is_weights,
    value_loss,
)

F64 = torch.float64


def close(actual, expected, atol=1e-10):
    assert_close(actual, torch.as_tensor(expected, dtype=F64), atol=atol, rtol=0)


def random_case(seed, batch=5, length=8):
    gen = torch.Generator().manual_seed(seed)
    old_logprobs = -torch.rand(batch, length, generator=gen, dtype=F64) * 3
    logprobs = old_logprobs + torch.randn(batch, length, generator=gen, dtype=F64) * 0.4
    advantages = torch.randn(batch, length, generator=gen, dtype=F64)
    mask = torch.rand(batch, length, generator=gen) > 0.3
    mask[0] = False
    return logprobs, old_logprobs, advantages, mask


def loop_policy_loss(logprobs, old_logprobs, advantages, mask, clip_eps, dual_clip):
    """Token-mean PPO loss, one token at a time; returns (loss, clipfrac, dual_clipfrac)."""
    total, clipped, dual, count = 0.0, 0, 0, 0
    for b in range(logprobs.shape[0]):
        for t in range(logprobs.shape[1]):
            if not mask[b, t]:
                continue
            ratio = math.exp(logprobs[b, t].item() - old_logprobs[b, t].item())
            adv = advantages[b, t].item()
            unclipped = -adv * ratio
            clip = -adv * min(max(ratio, 1 - clip_eps), 1 + clip_eps)
            loss = max(unclipped, clip)
            clipped += unclipped < clip
            if dual_clip is not None and adv < 0 and -adv * dual_clip < loss:
                loss = -adv * dual_clip
                dual += 1
            total += loss
            count += 1
    return total / count, clipped / count, dual / count


def test_policy_loss_clamps_a_huge_log_ratio():
    # log pi - log pi_old = 100: e^100 is inf in fp32, and without the clamp the gradient is NaN.
    logprobs = torch.zeros(1, 1, requires_grad=True)
    loss, _ = policy_loss(
        logprobs, torch.full((1, 1), -100.0), torch.ones(1, 1), torch.ones(1, 1), 0.2
    )
    loss.backward()
    # ratio e^20 > 1 + eps with A = 1: the clipped term -A * 1.2 is taken, and it has no gradient.
    assert loss.item() == pytest.approx(-1.2)
    assert logprobs.grad.tolist() == [[0.0]]
    # The same on a masked token with advantage 0 must leave the other token's gradient as it is.
    logprobs = torch.tensor([[-1.0, 0.0]], requires_grad=True)
    old = torch.tensor([[-1.0, -100.0]])
    loss, _ = policy_loss(
        logprobs, old, torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 0.0]]), 0.2
    )
    loss.backward()
    # token 0: ratio 1, loss -A * ratio = -2, d/dlogp = -A * ratio = -2 (token mean over 1 token).
    assert loss.item() == pytest.approx(-2.0)
    assert logprobs.grad.tolist() == [[-2.0, 0.0]]


def test_policy_loss_hand_computed():
    ratio = torch.tensor([[1.5, 0.5, 1.1, 0.7, 3.0]], dtype=F64)
    old_logprobs = torch.full((1, 5), -1.0, dtype=F64)
    logprobs = old_logprobs + ratio.log()
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0, 9.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, stats = policy_loss(logprobs, old_logprobs, advantages, mask, clip_eps=0.2)
    # per token max(-A*r, -A*clip(r, 0.8, 1.2)):
    #   A=1,  r=1.5: max(-1.5, -1.2) = -1.2 (clipped)
    #   A=1,  r=0.5: max(-0.5, -0.8) = -0.5
    #   A=-1, r=1.1: max(1.1, 1.1)   = 1.1
    #   A=-1, r=0.7: max(0.7, 0.8)   = 0.8  (clipped)
    # mean: (-1.2 - 0.5 + 1.1 + 0.8) / 4 = 0.05; clipfrac 2/4; the masked 5th token is ignored
    close(loss, 0.05)
    close(stats["clipfrac"], 0.5)
    close(stats["dual_clipfrac"], 0.0)
    # approx_kl: mean of k3 = (r - 1) - ln r over the 4 valid tokens
    k3 = [(r - 1) - math.log(r) for r in (1.5, 0.5, 1.1, 0.7)]
    close(stats["approx_kl"], sum(k3) / 4)


@pytest.mark.parametrize("dual_clip", [None, 2.0])
def test_policy_loss_matches_loop_reference(dual_clip):
    logprobs, old_logprobs, advantages, mask = random_case(seed=0)
    loss, stats = policy_loss(logprobs, old_logprobs, advantages, mask, 0.1, dual_clip)
    ref_loss, ref_clipfrac, ref_dual = loop_policy_loss(
        logprobs, old_logprobs, advantages, mask, 0.1, dual_clip
    )
    close(loss, ref_loss)
    close(stats["clipfrac"], ref_clipfrac)
    close(stats["dual_clipfrac"], ref_dual)
    assert 0 < ref_clipfrac < 1


def test_ratio_one_means_no_clipping():
    _, old_logprobs, advantages, mask = random_case(seed=1)
    loss, stats = policy_loss(old_logprobs.clone(), old_logprobs, advantages, mask, 0.2, 3.0)
    valid = advantages[mask]
    close(loss, -valid.mean())
    close(stats["clipfrac"], 0.0)
    close(stats["dual_clipfrac"], 0.0)
    close(stats["approx_kl"], 0.0)


def test_dual_clip_caps_the_loss_for_negative_advantages():
    ratio = torch.tensor([[5.0, 2.0, 5.0]], dtype=F64)
    logprobs = ratio.log()
    old_logprobs = torch.zeros(1, 3, dtype=F64)
    advantages = torch.tensor([[-1.0, -1.0, 1.0]], dtype=F64)
    mask = torch.ones(1, 3)
    loss, stats = policy_loss(logprobs, old_logprobs, advantages, mask, 0.2, dual_clip=3.0)
    # A=-1, r=5: max(5, 1.2) = 5, capped at -A*c = 3; A=-1, r=2: 2 < 3 stays;
    # A=1, r=5: max(-5, -1.2) = -1.2 (positive advantages are never dual-clipped)
    close(loss, (3.0 + 2.0 - 1.2) / 3)
    close(stats["dual_clipfrac"], 1 / 3)
    uncapped, _ = policy_loss(logprobs, old_logprobs, advantages, mask, 0.2)
    close(uncapped, (5.0 + 2.0 - 1.2) / 3)
    with pytest.raises(ValueError, match="dual_clip must be > 1, got 1.0"):
        policy_loss(logprobs, old_logprobs, advantages, mask, 0.2, dual_clip=1.0)


def test_clipped_tokens_get_no_gradient():
    old_logprobs = torch.zeros(1, 3, dtype=F64)
    # ratios 1.5 (A>0: clipped), 1.05 (inside), 0.5 (A<0: clipped)
    logprobs = torch.tensor([[1.5, 1.05, 0.5]], dtype=F64).log().requires_grad_()
    advantages = torch.tensor([[1.0, 1.0, -1.0]], dtype=F64)
    loss, _ = policy_loss(logprobs, old_logprobs, advantages, torch.ones(1, 3), 0.2)
    loss.backward()
    # d/dlogp of -A * exp(logp) / 3 at the unclipped token: -1 * 1.05 / 3
    close(logprobs.grad, [[0.0, -1.05 / 3, 0.0]])


def test_policy_loss_masked_positions_change_nothing():
    logprobs, old_logprobs, advantages, mask = random_case(seed=2)
    for mode in LOSS_AGG_MODES:
        base_loss, base_stats = policy_loss(
            logprobs, old_logprobs, advantages, mask, 0.2, 3.0, mode, max_new_tokens=16
        )
        loss, stats = policy_loss(
            logprobs.masked_fill(~mask, 5.0),
            old_logprobs.masked_fill(~mask, -9.0),
            advantages.masked_fill(~mask, -100.0),
            mask,
            0.2,
            3.0,
            mode,
            max_new_tokens=16,
        )
        assert torch.equal(loss, base_loss)
        for key, value in base_stats.items():
            assert torch.equal(stats[key], value), key


def test_value_loss_hand_computed():
    values = torch.tensor([[1.0, 2.0, 1.9, 8.0]], dtype=F64)
    old_values = torch.tensor([[0.8, 1.0, 1.0, 0.0]], dtype=F64)
    returns = torch.tensor([[1.5, 1.0, 2.0, 0.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, stats = value_loss(values, old_values, returns, mask, clip_eps=0.5)
    # v=1.0, old=0.8, R=1.5: clip(1.0) = 1.0 -> max(0.25, 0.25) = 0.25
    # v=2.0, old=1.0, R=1.0: clip -> 1.5      -> max(1.0, 0.25) = 1.0
    # v=1.9, old=1.0, R=2.0: clip -> 1.5      -> max(0.01, 0.25) = 0.25 (clipped)
    # 0.5 * (0.25 + 1.0 + 0.25) / 3 = 0.25
    close(loss, 0.25)
    close(stats["vf_clipfrac"], 1 / 3)
    unclipped, stats = value_loss(values, old_values, returns, mask, clip_eps=None)
    close(unclipped, 0.5 * (0.25 + 1.0 + 0.01) / 3)  # 0.21
    close(stats["vf_clipfrac"], 0.0)


def test_value_loss_masked_positions_change_nothing():
    gen = torch.Generator().manual_seed(3)
    values, old_values, returns = torch.randn(3, 4, 6, generator=gen, dtype=F64)
    mask = torch.rand(4, 6, generator=gen) > 0.4
    base_loss, base_stats = value_loss(values, old_values, returns, mask, 0.2)
    loss, stats = value_loss(
        values.masked_fill(~mask, 40.0),
        old_values.masked_fill(~mask, -40.0),
        returns.masked_fill(~mask, float("nan")),
        mask,
        0.2,
    )
    assert torch.equal(loss, base_loss)
    assert torch.equal(stats["vf_clipfrac"], base_stats["vf_clipfrac"])


def test_aggregate_loss_modes_hand_computed():
    loss_mat = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    # token_mean: (1 + 2 + 4) / 3
    close(aggregate_loss(loss_mat, mask, "token_mean"), 7 / 3)
    # seq_mean_token_mean: rows 1.5 and 4 (empty row 3 left out) -> 2.75
    close(aggregate_loss(loss_mat, mask, "seq_mean_token_mean"), 2.75)
    # seq_mean_token_sum: rows 3 and 4 -> 3.5
    close(aggregate_loss(loss_mat, mask, "seq_mean_token_sum"), 3.5)


def test_unknown_loss_agg_names_it_and_the_valid_ones():
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match=r"'token_avg'.*token_mean, seq_mean_token_mean"):
        aggregate_loss(x, x, "token_avg")
    with pytest.raises(ValueError, match="'sum'"):
        policy_loss(x, x, x, x, 0.2, loss_agg="sum")
    with pytest.raises(ValueError, match="'sum'"):
        value_loss(x, x, x, x, 0.2, loss_agg="sum")


def test_entropy_hand_computed_and_stable():
    # logits [0, ln 2]: p = [1/3, 2/3]; H = ln 3 - (2/3) ln 2
    logits = torch.tensor([[0.0, math.log(2.0)]], dtype=F64)
    close(entropy_from_logits(logits), [math.log(3) - 2 / 3 * math.log(2)])
    # uniform over 5 -> ln 5, even at logits where exp overflows
    close(entropy_from_logits(torch.full((2, 5), 1000.0, dtype=F64)), [math.log(5)] * 2)
    big = entropy_from_logits(torch.tensor([[1e4, 0.0, -1e4]], dtype=torch.float32))
    assert torch.isfinite(big).all() and abs(big.item()) < 1e-6


def test_value_clipfrac_is_zero_when_no_value_moved_past_the_clip():
    # Near 0 with mixed signs, old + (v - old) rounds away from v in float32 for many tokens
    # (v - old is inexact when v and old are not within a factor 2). No value moved by more than
    # 0.02 < eps = 0.1, so nothing was clipped and the fraction must be exactly 0.
    gen = torch.Generator().manual_seed(0)
    old_values = (torch.rand(64, 32, generator=gen) - 0.5) * 0.02
    values = (torch.rand(64, 32, generator=gen) - 0.5) * 0.02
    returns = (torch.rand(64, 32, generator=gen) - 0.5) * 0.02
    _, stats = value_loss(values, old_values, returns, torch.ones(64, 32), clip_eps=0.1)
    assert stats["vf_clipfrac"].item() == 0.0


# ---------------------------------------------------------------- a batch cut into parts


def test_aggregate_with_denominator_hand_computed():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # token_mean of the whole batch (3 tokens) is (1 + 2 + 4) / 3; a part holding only row 0
    # gives (1 + 2) / 3 with the batch's count, not its own mean (1 + 2) / 2.
    close(aggregate_loss(loss[:1], mask[:1], "token_mean", denominator=3.0), 1.0)
    close(aggregate_loss(loss, mask, "token_mean", denominator=3.0), 7 / 3)
    # seq_mean_token_mean: row means 1.5 and 4; over a batch of 4 rows with tokens: 5.5 / 4.
    close(aggregate_loss(loss, mask, "seq_mean_token_mean", denominator=4.0), 5.5 / 4)
    # seq_mean_token_sum: row sums 3 and 4, over 2 rows.
    close(aggregate_loss(loss, mask, "seq_mean_token_sum", denominator=2.0), 3.5)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_parts_with_the_whole_batch_count_add_up_to_the_whole_batch_loss(mode):
    _, _, loss, mask = random_case(seed=4, batch=6)  # row 0 has no tokens
    budget = 16  # read by seq_mean_token_sum_norm only
    whole = aggregate_loss(loss, mask, mode, max_new_tokens=budget)
    count = aggregation_count(mask, mode)
    parts = [(loss[i : i + 2], mask[i : i + 2]) for i in range(0, 6, 2)]
    assert sum(aggregation_count(m, mode) for _, m in parts) == count
    close(
        sum(aggregate_loss(x, m, mode, count, max_new_tokens=budget) for x, m in parts),
        whole.item(),
    )
    close(aggregate_loss(loss, mask, mode, count, max_new_tokens=budget), whole.item())


def test_seq_mean_token_sum_norm_hand_computed():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    # row sums 1 + 2 = 3 and 4, each over the budget 8: 3/8 and 4/8; the empty row is left
    # out: mean (3/8 + 4/8) / 2 = 7/16. The budget, not the lengths 2 and 1, divides the rows.
    close(aggregate_loss(loss, mask, "seq_mean_token_sum_norm", max_new_tokens=8), 7 / 16)
    # a part holding row 0 of this 2-row batch: (3/8) / 2
    close(aggregate_loss(loss[:1], mask[:1], "seq_mean_token_sum_norm", 2.0, 8), 3 / 16)
    # the policy loss at ratio 1 is -A per token: rows -3 and -4 over 8, mean -7/16
    policy, _ = policy_loss(
        loss, loss, loss, mask, 0.2, None, "seq_mean_token_sum_norm", max_new_tokens=8
    )
    close(policy, -7 / 16)
    value, _ = value_loss(
        loss, loss, loss + 1, mask, None, "seq_mean_token_sum_norm", max_new_tokens=8
    )
    # (v - R)^2 = 1 per token: row sums 2 and 1 over 8, mean 3/16, times 0.5
    close(value, 0.5 * 3 / 16)
    for budget in (None, 0):
        with pytest.raises(ValueError, match=f"needs max_new_tokens > 0, got {budget}"):
            aggregate_loss(loss, mask, "seq_mean_token_sum_norm", max_new_tokens=budget)


def test_aggregation_count_hand_computed():
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 1]])
    assert aggregation_count(mask, "token_mean") == 4
    assert aggregation_count(mask, "seq_mean_token_mean") == 2  # the empty row is left out
    assert aggregation_count(mask, "seq_mean_token_sum") == 2
    assert aggregation_count(mask, "seq_mean_token_sum_norm") == 2
    with pytest.raises(ValueError, match="unknown loss_agg mode 'x'"):
        aggregation_count(mask, "x")


# ---------------------------------------------------------------- truncated importance sampling


def test_truncated_is_weights_hand_computed():
    rollout = torch.full((1, 4), -1.0, dtype=F64)
    # learner/engine ratios 0.5, 1, 3 (above the cap 2) and a padded token
    old = rollout + torch.tensor([[0.5, 1.0, 3.0, 7.0]], dtype=F64).log()
    mask = torch.tensor([[1, 1, 1, 0]])
    weights, stats = truncated_is_weights(old, rollout, mask, cap=2.0)
    close(weights, [[0.5, 1.0, 2.0, 0.0]])
    close(stats["tis_clipfrac"], 1 / 3)
    # |log ratio|: log 2, 0, log 3 -> mean (log 2 + log 3) / 3, max log 3 (the padded log 7 not)
    close(stats["logprob_diff_mean"], (math.log(2) + math.log(3)) / 3)
    close(stats["logprob_diff_max"], math.log(3))
    with pytest.raises(ValueError, match="TIS cap must be > 0"):
        truncated_is_weights(old, rollout, mask, cap=0.0)


def test_policy_loss_weights_each_token_by_its_is_weight():
    old_logprobs = torch.full((1, 3), -1.0, dtype=F64)
    logprobs = old_logprobs.clone()  # ratio 1: the surrogate of a token is -A
    advantages = torch.tensor([[1.0, -2.0, 4.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 1]])
    weights = torch.tensor([[0.5, 1.0, 2.0]], dtype=F64)
    loss, _ = policy_loss(logprobs, old_logprobs, advantages, mask, 0.2, is_weights=weights)
    # (-1 * 0.5 + 2 * 1.0 - 4 * 2.0) / 3 = -6.5 / 3
    close(loss, -6.5 / 3)
    # weights of 1 change nothing
    plain, _ = policy_loss(logprobs, old_logprobs, advantages, mask, 0.2)
    ones, _ = policy_loss(
        logprobs, old_logprobs, advantages, mask, 0.2, is_weights=torch.ones_like(weights)
    )
    close(ones, plain.item())


def test_a_stale_sample_is_clipped_against_the_learner_and_weighted_by_its_staleness():
    """Pipelined generation (rollout.max_staleness 1): the engine drew each token under the last
    version (behaviour); the learner's log-probs before this update (proximal) anchor the clip,
    and min(pi_prox / pi_behav, cap) weighs the gap between them."""
    behaviour = torch.full((1, 3), -2.0, dtype=F64)
    proximal = behaviour + torch.tensor([[1.5, 1.0, 0.25]], dtype=F64).log()  # moved a version
    current = proximal + torch.tensor([[1.0, 1.5, 0.5]], dtype=F64).log()  # r = 1, 1.5, 0.5
    advantages = torch.tensor([[2.0, 1.0, -1.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 1]])
    weights, _ = truncated_is_weights(proximal, behaviour, mask, cap=1.2)
    close(weights, [[1.2, 1.0, 0.25]])  # 1.5 capped at 1.2
    loss, _ = policy_loss(current, proximal, advantages, mask, 0.2, is_weights=weights)
    # surrogates -min(rA, clip(r, 0.8, 1.2) A): -2, -min(1.5, 1.2) = -1.2, -min(-0.5, -0.8) = 0.8
    close(loss, (1.2 * -2.0 + 1.0 * -1.2 + 0.25 * 0.8) / 3)
