"""Log-probs (and entropy) of target tokens, computed a chunk of rows at a time.

A (B, T, V) fp32 log-softmax is the largest tensor in RLHF (B=64, T=2048, V=150k is 80 GB), so it
is never materialized: each chunk of flattened rows is upcast to fp32, scaled by the temperature,
reduced with logsumexp and gathered. When gradients are needed each chunk runs under activation
checkpointing, so backward also keeps at most one chunk's fp32 logits alive (it recomputes them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, overload

import torch
from torch.utils.checkpoint import checkpoint

from instructray.kernels.losses import entropy_from_logits

ChunkResult = tuple[torch.Tensor, ...]


def _chunk_from_logits(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float, with_entropy: bool
) -> ChunkResult:
    # logits (N, V) any float dtype, targets (N,) -> logprobs (N,) [, entropy (N,)]
    scaled = logits.float()  # (N, V) fp32
    if temperature != 1.0:  # skip a chunk-sized copy in the common case
        scaled = scaled / temperature
    logprobs = scaled.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(scaled, dim=-1)
    if with_entropy:
        return logprobs, entropy_from_logits(scaled)
    return (logprobs,)


def _chunk_from_hidden(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    lm_head_weight: torch.Tensor,
    temperature: float,
    with_entropy: bool,
) -> ChunkResult:
    # hidden (N, H), lm_head_weight (V, H): the projection runs in the model's dtype, like lm_head.
    return _chunk_from_logits(hidden @ lm_head_weight.T, targets, temperature, with_entropy)


def _map_chunks(
    chunk_fn: Callable[..., ChunkResult],
    rows: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int,
    shared: tuple[torch.Tensor, ...],
    temperature: float,
    with_entropy: bool,
) -> list[torch.Tensor]:
    # rows (N, D), targets (N,) -> each output (N,); shared tensors (lm head) go to every chunk.
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be > 0, got {chunk_size}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (rows, *shared))
    results = []
    row_chunks = torch.split(rows, chunk_size)
    for rows_c, targets_c in zip(row_chunks, torch.split(targets, chunk_size), strict=True):
        args = (rows_c, targets_c, *shared, temperature, with_entropy)
        if needs_grad:
            results.append(checkpoint(chunk_fn, *args, use_reentrant=False))
        else:
            results.append(chunk_fn(*args))
    return [torch.cat(parts) for parts in zip(*results, strict=True)]


def _reshape_outputs(
    outputs: list[torch.Tensor], batch_shape: torch.Size
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    if len(outputs) == 1:
        return outputs[0].view(batch_shape)
    logprobs, entropy = outputs
    return logprobs.view(batch_shape), entropy.view(batch_shape)


@overload
def logprobs_from_logits(
    logits: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = ...,
    temperature: float = ...,
    with_entropy: Literal[False] = ...,
) -> torch.Tensor: ...


@overload
def logprobs_from_logits(
    logits: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = ...,
    temperature: float = ...,
    *,
    with_entropy: Literal[True],
) -> tuple[torch.Tensor, torch.Tensor]: ...


def logprobs_from_logits(
    logits: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = 1024,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log softmax(logits / temperature)[targets], chunked. (B, T, V), (B, T) -> (B, T) [, (B, T)].

    logits[b, t] scores targets[b, t] (shift before calling). chunk_size counts rows of the
    flattened (B * T, V) logits. Slicing logits (logits[:, :-1]) makes them non-viewable and costs
    one full copy here; pass the full logits with shifted targets and drop the last column instead.
    """
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"targets {tuple(targets.shape)} != logits {tuple(logits.shape)}[:-1]")
    outputs = _map_chunks(
        _chunk_from_logits,
        logits.reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        chunk_size,
        (),
        temperature,
        with_entropy,
    )
    return _reshape_outputs(outputs, targets.shape)


@overload
def logprobs_from_hidden(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = ...,
    temperature: float = ...,
    with_entropy: Literal[False] = ...,
) -> torch.Tensor: ...


@overload
def logprobs_from_hidden(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = ...,
    temperature: float = ...,
    *,
    with_entropy: Literal[True],
) -> tuple[torch.Tensor, torch.Tensor]: ...


def logprobs_from_hidden(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = 1024,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Like logprobs_from_logits, projecting a chunk at a time. (B, T, H), (V, H), (B, T) -> (B, T).

    The full (B, T, V) logits never exist, in forward or backward. lm_head_weight must be the
    materialized weight (under ZeRO-3, gathered) for the whole backward pass, which recomputes
    each chunk's logits from it.
    """
    if targets.shape != hidden.shape[:-1]:
        raise ValueError(f"targets {tuple(targets.shape)} != hidden {tuple(hidden.shape)}[:-1]")
    outputs = _map_chunks(
        _chunk_from_hidden,
        hidden.reshape(-1, hidden.shape[-1]),
        targets.reshape(-1),
        chunk_size,
        (lm_head_weight,),
        temperature,
        with_entropy,
    )
    return _reshape_outputs(outputs, targets.shape)
