"""Our estimators against the peers' definitions, each rewritten here as plain Python loops
following the published code (read at these commits):

- veRL: verl-project/verl (was volcengine/verl) 1dda039b, verl/trainer/ppo/core_algos.py and
  verl/utils/torch_functional.py (masked_whiten).
- OpenRLHF: OpenRLHF/OpenRLHF 3c3be623, openrlhf/trainer/ppo_utils/experience_maker.py
  (compute_advantages_and_returns, get_cumulative_returns), openrlhf/models/utils.py
  (compute_reward).
- TRL: huggingface/trl f2cd5771, trl/trainer/grpo_trainer.py (GRPOTrainer).

The peers read token rewards that are 0 off the response (they sum whole rows), so the inputs
here are too; where our definition departs from a peer's (a group of one, the std of the
whitening), a test says how.
"""

import math
from collections import defaultdict

import pytest
import torch
from torch.testing import assert_close

from instructray.kernels import aggregate_loss, compute_token_rewards, estimator_advantages

F64 = torch.float64
SEEDS = [0, 1, 2]


def close(actual, expected, atol=1e-12):
    assert_close(actual, torch.as_tensor(expected, dtype=F64), atol=atol, rtol=0)


def random_case(seed, batch=10, length=6):
    """Token rewards on response tokens only; groups of 4, 3, 3 (no group of one), ids shuffled."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch, length, generator=gen) > 0.3
    mask[:, 0] = True  # no empty row (OpenRLHF puts an empty row's score on its last column)
    rewards = torch.where(mask, torch.randn(batch, length, generator=gen, dtype=F64), 0.0)
    ids = torch.tensor([8, 8, 8, 8, 1, 1, 1, 30, 30, 30])[torch.randperm(batch, generator=gen)]
    return rewards, mask, ids


def outcome_case(seed, groups=3, size=4, length=6):
    """One score per row on its last response token (KL in the loss: kl_coef 0), groups of
    `size` consecutive rows, as TRL and OpenRLHF lay them out."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(groups * size, length, generator=gen) > 0.3
    mask[:, 0] = True
    scores = torch.randn(groups * size, generator=gen, dtype=F64)
    zeros = torch.zeros(mask.shape, dtype=F64)
    rewards, _ = compute_token_rewards(scores, zeros, zeros, mask, kl_coef=0.0)
    return scores, rewards, mask, torch.arange(groups).repeat_interleave(size)


# ---------------------------------------------------------------- veRL references


def verl_group_outcome(rewards, mask, index, estimator, epsilon=1e-6):
    """veRL compute_grpo_outcome_advantage (norm_adv_by_std_in_grpo True: grpo, False:
    dr_grpo), compute_rloo_outcome_advantage, and the group part of
    compute_reinforce_plus_plus_baseline_outcome_advantage."""
    batch, length = rewards.shape
    scores = [sum(rewards[i, t].item() for t in range(length)) for i in range(batch)]
    id2score = defaultdict(list)
    for i in range(batch):
        id2score[index[i].item()].append(scores[i])
    out = torch.zeros(batch, length, dtype=F64)
    for i in range(batch):
        group = id2score[index[i].item()]
        n = len(group)
        mean = sum(group) / n if n > 1 else 0.0  # a group of one: mean 0, std 1
        std = math.sqrt(sum((s - mean) ** 2 for s in group) / (n - 1)) if n > 1 else 1.0
        if estimator == "grpo":
            adv = (scores[i] - mean) / (std + epsilon)
        elif estimator == "rloo":  # a group of one keeps its score
            adv = scores[i] * n / (n - 1) - mean * n / (n - 1) if n > 1 else scores[i]
        else:  # dr_grpo, reinforce_pp_baseline
            adv = scores[i] - mean
        for t in range(length):
            out[i, t] = adv * mask[i, t].item()
    return out


def verl_masked_whiten(values, mask):
    """veRL verl_F.masked_whiten (shift_mean=True): unbiased variance, rsqrt(var + 1e-8)."""
    cells = [(i, t) for i in range(values.shape[0]) for t in range(values.shape[1]) if mask[i, t]]
    mean = sum(values[c].item() for c in cells) / len(cells)
    var = sum((values[c].item() - mean) ** 2 for c in cells) / (len(cells) - 1)
    out = torch.zeros_like(values)
    for c in cells:  # veRL multiplies the result by the mask afterwards
        out[c] = (values[c].item() - mean) / math.sqrt(var + 1e-8)
    return out


def verl_reinforce_pp_returns(rewards, mask, gamma=1.0):
    """veRL compute_reinforce_plus_plus_outcome_advantage, before masked_whiten: a masked token
    carries the running return through unchanged."""
    batch, length = rewards.shape
    returns = torch.zeros_like(rewards)
    for i in range(batch):
        running = 0.0
        for t in reversed(range(length)):
            new = rewards[i, t].item() + gamma * running
            returns[i, t] = new * mask[i, t].item()
            running = new if mask[i, t] else running
    return returns


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo"])
def test_group_estimators_match_verl(seed, estimator):
    rewards, mask, ids = random_case(seed)
    ours = estimator_advantages(rewards, mask, ids, estimator)
    close(ours, verl_group_outcome(rewards, mask, ids, estimator))


@pytest.mark.parametrize("seed", SEEDS)
def test_reinforce_pp_matches_verl(seed):
    rewards, mask, ids = random_case(seed)
    ours = estimator_advantages(rewards, mask, ids, "reinforce_pp")
    close(ours, verl_masked_whiten(verl_reinforce_pp_returns(rewards, mask), mask))


@pytest.mark.parametrize("seed", SEEDS)
def test_reinforce_pp_baseline_matches_verl(seed):
    rewards, mask, ids = random_case(seed)
    centered = verl_group_outcome(rewards, mask, ids, "reinforce_pp_baseline")
    ours = estimator_advantages(rewards, mask, ids, "reinforce_pp_baseline")
    close(ours, verl_masked_whiten(centered, mask))


def test_a_group_of_one_departs_from_verl():
    rewards, mask, ids = random_case(seed=0)
    ids[0] = 99  # row 0 alone
    score = rewards[0].sum().item()
    for estimator in ("grpo", "dr_grpo", "rloo"):
        ours = estimator_advantages(rewards, mask, ids, estimator)
        theirs = verl_group_outcome(rewards, mask, ids, estimator)
        # veRL: mean 0 and std 1 for a group of one, so s / (1 + eps) (grpo) or s; ours: 0
        raw = score / (1 + 1e-6) if estimator == "grpo" else score
        close(theirs[0], raw * mask[0].to(F64))
        close(ours[0], torch.zeros(rewards.shape[1]))
        close(ours[1:], theirs[1:])  # the other groups agree


# ---------------------------------------------------------------- OpenRLHF references


def openrlhf_advantages(scores, mask, n_samples, estimator):
    """OpenRLHF compute_advantages_and_returns, kl_coef 0: the group baseline on the score,
    compute_reward puts it on the last action token, get_cumulative_returns (gamma 1), then
    for reinforce and reinforce_baseline a whitening with the biased variance."""
    batch, length = mask.shape
    shaped = []
    for i in range(batch):
        start = i - i % n_samples  # groups are n_samples consecutive rows
        group = [scores[j].item() for j in range(start, start + n_samples)]
        mean = sum(group) / n_samples
        if estimator == "rloo":
            shaped.append(scores[i].item() - (sum(group) - scores[i].item()) / (n_samples - 1))
        elif estimator == "group_norm":
            std = math.sqrt(sum((s - mean) ** 2 for s in group) / (n_samples - 1))
            shaped.append((scores[i].item() - mean) / (std + 1e-9))
        elif estimator in ("reinforce_baseline", "dr_grpo"):
            shaped.append(scores[i].item() - mean)
        else:  # reinforce
            shaped.append(scores[i].item())
    returns = torch.zeros(batch, length, dtype=F64)
    for i in range(batch):
        last = max(t for t in range(length) if mask[i, t])
        running = 0.0
        for t in reversed(range(length)):
            running += shaped[i] * (t == last) * mask[i, t].item()
            returns[i, t] = running
    if estimator not in ("reinforce", "reinforce_baseline"):
        return returns
    cells = [(i, t) for i in range(batch) for t in range(length) if mask[i, t]]
    mean = sum(returns[c].item() for c in cells) / len(cells)
    var = sum((returns[c].item() - mean) ** 2 for c in cells) / len(cells)
    return (returns - mean) / math.sqrt(max(var, 1e-8))


OPENRLHF_NAMES = {
    "grpo": "group_norm",
    "dr_grpo": "dr_grpo",
    "rloo": "rloo",
    "reinforce_pp": "reinforce",
    "reinforce_pp_baseline": "reinforce_baseline",
}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo"])
def test_group_estimators_match_openrlhf(seed, estimator):
    scores, rewards, mask, ids = outcome_case(seed)
    ours = estimator_advantages(rewards, mask, ids, estimator, eps=1e-9)  # OpenRLHF's eps
    theirs = openrlhf_advantages(scores, mask, 4, OPENRLHF_NAMES[estimator])
    close(ours, torch.where(mask, theirs, 0.0))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("estimator", ["reinforce_pp", "reinforce_pp_baseline"])
def test_whitened_estimators_match_openrlhf_up_to_bessel(seed, estimator):
    scores, rewards, mask, ids = outcome_case(seed)
    ours = estimator_advantages(rewards, mask, ids, estimator)
    theirs = openrlhf_advantages(scores, mask, 4, OPENRLHF_NAMES[estimator])
    # OpenRLHF divides by the biased std, we (and veRL) by the unbiased one: over N tokens
    # ours = theirs x sqrt((N - 1) / N), up to the 1e-8 each adds to or floors the variance.
    tokens = mask.sum().item()
    close(ours, torch.where(mask, theirs, 0.0) * math.sqrt((tokens - 1) / tokens), atol=1e-7)


# ---------------------------------------------------------------- TRL references


def trl_grpo_advantages(rewards, num_generations, scale_rewards):
    """TRL GRPOTrainer._generate_and_score_completions (sum_then_normalize): group mean and
    nanstd (Bessel) over num_generations consecutive rows; (r - mean) / (std + 1e-4) unless
    scale_rewards == "none"."""
    out = []
    for i in range(len(rewards)):
        start = i - i % num_generations
        group = [rewards[j].item() for j in range(start, start + num_generations)]
        mean = sum(group) / num_generations
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / (num_generations - 1))
        adv = rewards[i].item() - mean
        out.append(adv if scale_rewards == "none" else adv / (std + 1e-4))
    return out


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("estimator", "scale_rewards"), [("grpo", "group"), ("dr_grpo", "none")])
def test_grpo_and_dr_grpo_match_trl(seed, estimator, scale_rewards):
    scores, rewards, mask, ids = outcome_case(seed, groups=4, size=3)
    ours = estimator_advantages(rewards, mask, ids, estimator, eps=1e-4)  # TRL's eps
    theirs = trl_grpo_advantages(scores, 3, scale_rewards)
    close(ours, torch.where(mask, torch.tensor(theirs, dtype=F64)[:, None], 0.0))


# ---------------------------------------------------------------- Dr. GRPO's loss normalisation


def trl_dr_grpo_loss(per_token_loss, mask, max_completion_length):
    """TRL GRPOTrainer._compute_loss, loss_type "dr_grpo": token sum / (rows x budget)."""
    total = sum(
        per_token_loss[i, t].item()
        for i in range(mask.shape[0])
        for t in range(mask.shape[1])
        if mask[i, t]
    )
    return total / (mask.shape[0] * max_completion_length)


def verl_seq_mean_token_sum_norm(loss_mat, mask, loss_scale_factor):
    """veRL agg_loss "seq-mean-token-sum-norm", dp_size 1: the row sums of rows with tokens,
    over their number, over loss_scale_factor (its default is the padded width instead)."""
    sums = [
        sum(loss_mat[i, t].item() for t in range(mask.shape[1]) if mask[i, t])
        for i in range(mask.shape[0])
        if mask[i].any()
    ]
    return sum(sums) / len(sums) / loss_scale_factor


@pytest.mark.parametrize("seed", SEEDS)
def test_seq_mean_token_sum_norm_matches_trl_and_verl(seed):
    _, _, mask, _ = outcome_case(seed)
    loss_mat = torch.randn(mask.shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
    ours = aggregate_loss(loss_mat, mask, "seq_mean_token_sum_norm", max_new_tokens=16)
    close(ours, trl_dr_grpo_loss(loss_mat, mask, 16))  # no empty row: the same row count
    close(ours, verl_seq_mean_token_sum_norm(loss_mat, mask, 16))
    # an empty row: left out by veRL and us, counted by TRL
    mask[0] = False
    ours = aggregate_loss(loss_mat, mask, "seq_mean_token_sum_norm", max_new_tokens=16)
    close(ours, verl_seq_mean_token_sum_norm(loss_mat, mask, 16))
    rows = mask.shape[0]
    close(ours, trl_dr_grpo_loss(loss_mat, mask, 16) * rows / (rows - 1))
