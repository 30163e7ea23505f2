"""Sums and means over the ranks of the default torch.distributed group, as the learners of PPO,
SFT and the reward model use them (gloo on CPU, NCCL on GPUs)."""

from __future__ import annotations

import socket

import torch


def sum_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """x summed over every rank (a new tensor; x is left as it is)."""
    x = x.clone()
    torch.distributed.all_reduce(x)
    return x


def mean_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Each value's mean over the ranks; every rank must pass the same keys."""
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    t = sum_over_ranks(t) / torch.distributed.get_world_size()
    return dict(zip(keys, t.tolist(), strict=True))


def free_port() -> int:
    """A TCP port free on this node now (the rendezvous port of a process group)."""
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]
