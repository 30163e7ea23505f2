"""Generalized advantage estimation (Schulman et al. 2016) over response tokens."""

from __future__ import annotations

import torch


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE advantages and returns. rewards, values, response_mask: (B, T) -> 2 x (B, T).

    Only tokens where response_mask is set are steps of the episode: a masked token, even in the
    middle of a row, is skipped (the next value and the running advantage pass through it), and
    its reward and value are never read. The episode ends after a row's last response token
    (next value 0). Advantages and returns are 0 on masked tokens.
    """
    mask = response_mask.bool()
    batch, length = rewards.shape
    zeros = torch.zeros(batch, dtype=rewards.dtype, device=rewards.device)  # (B,)
    next_value = zeros  # value of the next valid token of each row
    running_gae = zeros  # advantage of the next valid token of each row
    advantages_reversed = []
    # T is at most a few thousand and each step is one vector op over B, so a Python loop is fine.
    for t in reversed(range(length)):
        valid = mask[:, t]  # (B,)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        gae = delta + gamma * lam * running_gae
        advantages_reversed.append(torch.where(valid, gae, zeros))
        next_value = torch.where(valid, values[:, t], next_value)
        running_gae = torch.where(valid, gae, running_gae)
    advantages = torch.stack(advantages_reversed[::-1], dim=1)  # (B, T)
    returns = torch.where(mask, advantages + values, torch.zeros_like(values))
    return advantages, returns
