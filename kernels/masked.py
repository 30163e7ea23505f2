"""Masked reductions over response tokens: sum, mean, variance, whitening."""

from __future__ import annotations

from collections.abc import Callable

import torch

Dim = int | tuple[int, ...] | None
SumShards = Callable[[torch.Tensor], torch.Tensor] | None


def zero_masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x where mask is set, 0 elsewhere. (B, T) -> (B, T)."""
    # torch.where, not x * mask: a NaN or inf at a masked position must not leak into the result.
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: Dim = None) -> torch.Tensor:
    """Sum of x over positions where mask is set. x, mask: (B, T) -> scalar, or reduced over dim."""
    selected = zero_masked(x, mask)
    return selected.sum() if dim is None else selected.sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: Dim = None) -> torch.Tensor:
    """Mean of x where mask is set (0 if nowhere). x, mask: (B, T) -> scalar, or reduced on dim."""
    count = masked_sum(torch.ones_like(x), mask, dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def masked_var(
    x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True, sum_shards: SumShards = None
) -> torch.Tensor:
    """Variance of x over all positions where mask is set. x, mask: (B, T) -> scalar.

    With sum_shards (a sum over the ranks that each hold some rows of one batch, e.g. an
    all-reduce), it is the variance over the whole batch."""
    return _moments(x, mask, unbiased, sum_shards)[1]


def masked_whiten(
    x: torch.Tensor,
    mask: torch.Tensor,
    shift_mean: bool = True,
    eps: float = 1e-8,
    sum_shards: SumShards = None,
) -> torch.Tensor:
    """Normalize x to masked mean 0, var 1 (mean kept if not shift_mean); 0 where masked. (B, T).
    With sum_shards, the mean and variance are the whole batch's (see masked_var)."""
    mean, var = _moments(x, mask, True, sum_shards)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return zero_masked(whitened, mask)


def _moments(
    x: torch.Tensor, mask: torch.Tensor, unbiased: bool, sum_shards: SumShards
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked mean and variance of x, over every shard's rows when sum_shards is given."""
    total = sum_shards or (lambda t: t)
    count = int(total(mask.bool().sum().to(torch.float64).reshape(1)).item())
    needed = 2 if unbiased else 1
    if count < needed:
        raise ValueError(
            f"masked_var needs at least {needed} unmasked element(s) (unbiased={unbiased}), "
            f"got {count}"
        )
    mean = total(masked_sum(x, mask).reshape(1))[0] / count
    var = total(masked_sum((x - mean) ** 2, mask).reshape(1))[0] / (count - unbiased)
    return mean, var
