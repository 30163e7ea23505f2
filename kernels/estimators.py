"""Critic-free advantage estimators: GRPO (Shao et al. 2024), Dr. GRPO (Liu et al. 2025), RLOO
(Ahmadian et al. 2024) and REINFORCE++ with and without a group baseline (Hu 2025).

A group is the samples of one prompt, tagged by an id at rollout: rows with equal group_ids
share a baseline, whatever their position in the batch, whatever their text. Ids need not be
sorted or contiguous, and groups may differ in size. A row's score is the sum of its token
rewards over its response tokens (with the KL in the loss, kl_coef is 0 in the token rewards
and the sum is the reward model's score). Every row counts in its group's statistics, a row
without a response token with a score of 0.
"""

from __future__ import annotations

import torch

from instructray.kernels.masked import masked_sum, masked_whiten, zero_masked

CRITIC_FREE_ESTIMATORS = ("grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline")
# Those that subtract a baseline of the row's group from the row's score.
GROUP_ESTIMATORS = ("grpo", "dr_grpo", "rloo", "reinforce_pp_baseline")


def group_advantages(
    scores: torch.Tensor, group_ids: torch.Tensor, estimator: str, eps: float = 1e-6
) -> torch.Tensor:
    """One advantage per row from its score and its group's. (B,), (B,) long -> (B,).

    grpo: (s - mean) / (std + eps), std unbiased (Bessel), eps added to the std: as veRL's
      compute_grpo_outcome_advantage (torch.std, eps 1e-6) and TRL's GRPOTrainer (nanstd with
      Bessel's correction, eps 1e-4) and OpenRLHF's group_norm (eps 1e-9).
    dr_grpo, reinforce_pp_baseline: s - mean (whitening over the batch comes later).
    rloo: s - mean of the group's other rows = K / (K - 1) * (s - mean), K the group's size.

    A group of one gets 0 from every estimator: it has no other sample to compare with. veRL
    gives it its raw score instead (grpo: mean 0, std 1 -> s / (1 + eps); rloo and
    reinforce_pp_baseline: mean 0 -> s; its vectorized rloo gives 0), TRL gives 0 (std 0 ->
    (s - s) / 1e-4), OpenRLHF refuses n_samples_per_prompt = 1.
    """
    if estimator not in GROUP_ESTIMATORS:
        raise ValueError(
            f"unknown group estimator {estimator!r}; valid: {', '.join(GROUP_ESTIMATORS)}"
        )
    if group_ids.shape != scores.shape:
        raise ValueError(
            f"group_ids must hold one id per row: shape {tuple(group_ids.shape)}, "
            f"scores {tuple(scores.shape)}"
        )
    if estimator == "grpo" and not eps > 0:
        raise ValueError(f"grpo needs eps > 0 (a group of equal scores has std 0), got {eps}")
    size, mean, std = _group_moments(scores, group_ids)  # (B,) each
    # A group of one's mean is its own score, exactly: centered is 0, and so is every advantage.
    centered = scores - mean
    if estimator == "grpo":
        return centered / (std + eps)
    if estimator == "rloo":
        # s - (K mean - s) / (K - 1) = K (s - mean) / (K - 1); the clamp spares K = 1 a 0 / 0.
        return centered * size / (size - 1).clamp(min=1)
    return centered


def returns_to_go(token_rewards: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Undiscounted return from each response token on: sum of the row's token rewards at and
    after it, masked tokens skipped (their reward never read). (B, T), (B, T) -> (B, T), 0 where
    masked."""
    rewards = zero_masked(token_rewards, response_mask)
    return zero_masked(rewards.flip(-1).cumsum(-1).flip(-1), response_mask)


def estimator_advantages(
    token_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    group_ids: torch.Tensor,
    estimator: str,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Advantages of a critic-free estimator. (B, T), (B, T), (B,) long -> (B, T), 0 where masked.

    grpo, dr_grpo, rloo: group_advantages of the row scores, the same on each response token.
    reinforce_pp: returns_to_go whitened over all response tokens of the batch.
    reinforce_pp_baseline: s - group mean on each response token, whitened over the batch.
    Whitening is masked_whiten: mean 0 (the mean is not added back) and unbiased variance +
    1e-8, as veRL's masked_whiten in compute_reinforce_plus_plus(_baseline)_outcome_advantage;
    OpenRLHF also leaves the mean out but divides by sqrt(max(biased variance, 1e-8)).
    """
    if estimator not in CRITIC_FREE_ESTIMATORS:
        raise ValueError(
            f"unknown critic-free estimator {estimator!r}; valid: "
            f"{', '.join(CRITIC_FREE_ESTIMATORS)} (gae needs values: compute_gae)"
        )
    if estimator == "reinforce_pp":
        return masked_whiten(returns_to_go(token_rewards, response_mask), response_mask)
    scores = masked_sum(token_rewards, response_mask, dim=-1)  # (B,)
    per_row = group_advantages(scores, group_ids, estimator, eps)  # (B,)
    advantages = zero_masked(per_row[:, None].expand_as(token_rewards), response_mask)  # (B, T)
    if estimator == "reinforce_pp_baseline":
        return masked_whiten(advantages, response_mask)
    return advantages


def _group_moments(
    scores: torch.Tensor, group_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's group size, mean and unbiased std (0 for a group of one). 2 x (B,) -> 3 x (B,)."""
    # Ids are arbitrary (a prompt's tag, not a position): number the groups 0 .. G-1 first.
    ids, group = torch.unique(group_ids, return_inverse=True)  # (G,), (B,)
    zeros = scores.new_zeros(ids.numel())  # (G,)
    size = zeros.index_add(0, group, torch.ones_like(scores))
    mean = zeros.index_add(0, group, scores) / size
    squares = zeros.index_add(0, group, (scores - mean[group]) ** 2)
    std = (squares / (size - 1).clamp(min=1)).sqrt()
    return size[group], mean[group], std[group]
