"""Per-token PPO rewards: the reward model's score on the last response token minus a KL penalty
against the reference (SFT) policy on every response token (Ziegler et al. 2019, InstructGPT);
and the score itself when several rewards make it: their weighted sum."""

from __future__ import annotations

import torch

from instructray.kernels.kl import kl_penalty


def combine_rewards(scores: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """score = sum_c weights[c] * scores[:, c], one column per reward. (B, C), (C,) -> (B,).

    Summed column by column, left to right: one column with weight 1 returns that column
    bit for bit (a -0.0 stays -0.0, which a reduction would turn into 0.0)."""
    if scores.dim() != 2 or weights.shape != (scores.shape[1],) or scores.shape[1] < 1:
        raise ValueError(
            f"combine_rewards needs scores (B, C) and weights (C,) with C >= 1, got "
            f"{tuple(scores.shape)} and {tuple(weights.shape)}"
        )
    weights = weights.to(scores.dtype)
    out = scores[:, 0] * weights[0]
    for c in range(1, scores.shape[1]):
        out = out + scores[:, c] * weights[c]
    return out


def last_token_index(response_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last set position in each row, -1 for an empty row. (B, T) -> (B,) long."""
    positions = torch.arange(response_mask.shape[-1], device=response_mask.device)  # (T,)
    masked_positions = torch.where(response_mask.bool(), positions, -1)  # (B, T)
    return masked_positions.max(dim=-1).values


def compute_token_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    kl_coef: float,
    kl_estimator: str = "k1",
    score_clip: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """rewards = -kl_coef * kl + score on the last response token. (B,), 3 x (B, T) -> 2 x (B, T).

    Returns (rewards, kl), both 0 on masked tokens. The score goes on the last position where
    response_mask is set, so left padding, right padding and holes all work; a row with an empty
    mask gets no score at all (it has no token to carry it).
    """
    mask = response_mask.bool()
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    kl = torch.where(mask, kl_penalty(logprobs, ref_logprobs, kl_estimator), zero)  # (B, T)
    if score_clip is not None:
        if score_clip <= 0:
            raise ValueError(f"score_clip must be > 0, got {score_clip}")
        scores = scores.clamp(-score_clip, score_clip)
    positions = torch.arange(mask.shape[-1], device=mask.device)  # (T,)
    # An empty row's index is -1, which matches no position.
    is_last = positions == last_token_index(mask)[:, None]  # (B, T)
    score_per_token = torch.where(is_last, scores.to(logprobs.dtype)[:, None], zero)  # (B, T)
    rewards = -kl_coef * kl + score_per_token
    return rewards, kl
