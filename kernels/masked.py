"""Masked reductions over response tokens: sum, mean, variance, whitening."""

from __future__ import annotations

import torch

Dim = int | tuple[int, ...] | None


def _select(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # torch.where, not x * mask: a NaN or inf at a masked position must not leak into the result.
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: Dim = None) -> torch.Tensor:
    """Sum of x over positions where mask is set. x, mask: (B, T) -> scalar, or reduced over dim."""
    selected = _select(x, mask)
    return selected.sum() if dim is None else selected.sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: Dim = None) -> torch.Tensor:
    """Mean of x where mask is set (0 if nowhere). x, mask: (B, T) -> scalar, or reduced on dim."""
    count = masked_sum(torch.ones_like(x), mask, dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of x over all positions where mask is set. x, mask: (B, T) -> scalar."""
    count = int(mask.bool().sum().item())
    needed = 2 if unbiased else 1
    if count < needed:
        raise ValueError(
            f"masked_var needs at least {needed} unmasked element(s) (unbiased={unbiased}), "
            f"got {count}"
        )
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        var = var * (count / (count - 1))
    return var


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Normalize x to masked mean 0, var 1 (mean kept if not shift_mean); 0 where masked. (B, T)."""
    mean = masked_mean(x, mask)
    var = masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return _select(whitened, mask)
