"""Per-token PPO rewards: the reward model's score on the last response token minus a KL penalty
against the reference (SFT) policy on every response token (Ziegler et al. 2019, InstructGPT)."""

from __future__ import annotations

import torch

from kernels.kl import kl_penalty


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
