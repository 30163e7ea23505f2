"""Broadcast transport for weight sync: learner rank 0 -> every rollout worker, in buckets.

One torch.distributed process group, separate from the learner's own and from vLLM's: rank 0 is
learner rank 0, ranks 1.. are the engines' workers (one per tensor-parallel rank). Its backend is
NCCL on GPU and gloo on CPU; the protocol is the same.

The stream is self-describing, so receivers need no layout in advance and the sender can gather
ZeRO-3 parameters one at a time: each bucket is three broadcasts, sizes (header bytes, data bytes),
a JSON header {version, params: [[name, dtype, shape], ...]}, then the parameters' bytes back to
back, each padded to ALIGN bytes (so every one can be viewed in its dtype in place). A sizes
message of (0, 0) ends the stream.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterable, Iterator
from datetime import timedelta

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

GROUP_PREFIX = "instructray-weights"
ALIGN = 16


def local_address(peer_host: str, peer_port: int) -> str:
    """The address of this host on the route to peer (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((peer_host, peer_port))
        return s.getsockname()[0]


# NCCL's error handling for the weight group: CleanUpOnly. A member that dies mid-sync leaves the
# others blocked in a collective until the group's timeout; torch's default then tears their
# process down (SkipCleanUp), which inside a vLLM worker kills the engine of a live actor. With
# CleanUpOnly the watchdog aborts the communicator and the collective raises: the driver sees an
# error naming the engine, and forms the group again. Read when a ProcessGroupNCCL is built, so it
# reaches only groups built after it (the learner's own group is built before).
NCCL_ERROR_HANDLING = {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "2"}


def open_group(
    host: str, port: int, rank: int, world_size: int, backend: str, timeout_s: float
) -> dist.ProcessGroup:
    """Join the weight group (rank 0 hosts the rendezvous at host:port); blocks until every rank
    has joined or timeout_s passes, which also bounds each of its collectives. Leaves the
    process's default group alone."""
    timeout = timedelta(seconds=timeout_s)
    store = dist.TCPStore(
        host, port, world_size, is_master=rank == 0, timeout=timeout, wait_for_workers=False
    )
    store = dist.PrefixStore(GROUP_PREFIX, store)
    if backend == "gloo":
        options = dist.ProcessGroupGloo._Options()
        options._timeout = timeout
        options._devices = [dist.ProcessGroupGloo.create_device(hostname=local_address(host, port))]
        group = dist.ProcessGroupGloo(store, rank, world_size, options)
    elif backend == "nccl":
        for key, value in NCCL_ERROR_HANDLING.items():
            os.environ.setdefault(key, value)
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout
        group = dist.ProcessGroupNCCL(store, rank, world_size, options)
    else:
        raise ValueError(f"weight group backend must be gloo or nccl, got {backend!r}")
    # A first collective completes the rendezvous now, not inside the first sync.
    _broadcast(group, torch.zeros(1, device=_device(backend)))
    return group


def close_group(group: dist.ProcessGroup | None) -> None:
    """Release a weight group before another forms (a group re-formed after a member left or
    joined): an NCCL group's communicator, buffers and watchdog thread would outlive it, one set
    per re-forming. Aborted, not shut down: a shutdown waits on work a dead member never ends."""
    if group is None:
        return
    try:
        group.abort()
    except Exception as e:  # a group already broken by a dead member: nothing left to free
        logger.info("weight group: abort of the old group: %s", e)


def _device(backend: str) -> torch.device:
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _broadcast(group: dist.ProcessGroup, tensor: torch.Tensor) -> None:
    group.broadcast(tensor, 0).wait()


def _as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)


def buckets(
    weights: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """(name, tensor) pairs grouped in stream order into buckets of at most bucket_bytes of
    tensor data; a tensor larger than that goes alone. Pulls the stream lazily."""
    bucket: list[tuple[str, torch.Tensor]] = []
    filled = 0
    for name, tensor in weights:
        size = tensor.numel() * tensor.element_size()
        if bucket and filled + size > bucket_bytes:
            yield bucket
            bucket, filled = [], 0
        bucket.append((name, tensor))
        filled += size
    if bucket:
        yield bucket


def send_weights(
    group: dist.ProcessGroup,
    weights: Iterable[tuple[str, torch.Tensor]],
    version: int,
    bucket_bytes: int,
    device: torch.device,
) -> int:
    """Broadcast (name, tensor) pairs from rank 0 in buckets (`buckets`); tensors may arrive
    lazily. -> bytes sent."""
    total = 0
    for bucket in buckets(weights, bucket_bytes):
        header = {
            "version": version,
            "params": [[n, str(t.dtype).removeprefix("torch."), list(t.shape)] for n, t in bucket],
        }
        head = torch.frombuffer(bytearray(json.dumps(header).encode()), dtype=torch.uint8)
        parts = []
        for _, t in bucket:
            parts.append(_as_bytes(t).to(device))
            parts.append(torch.zeros(-parts[-1].numel() % ALIGN, dtype=torch.uint8, device=device))
            total += t.numel() * t.element_size()
        data = torch.cat(parts)
        _broadcast(group, torch.tensor([head.numel(), data.numel()], device=device))
        _broadcast(group, head.to(device))
        _broadcast(group, data)
    _broadcast(group, torch.zeros(2, dtype=torch.int64, device=device))
    return total


def receive_weights(
    group: dist.ProcessGroup, version: int, device: torch.device
) -> Iterator[tuple[str, torch.Tensor]]:
    """The (name, tensor) pairs rank 0 sends, bucket by bucket; checks each bucket's version.

    Drain it to the end (the sender waits on every receiver for every bucket). A version
    mismatch still receives the whole stream, so the group stays usable, then raises."""
    error = None
    while True:
        sizes = torch.zeros(2, dtype=torch.int64, device=device)
        _broadcast(group, sizes)
        head_bytes, data_bytes = sizes.tolist()
        if head_bytes == 0:
            if error:
                raise RuntimeError(error)
            return
        head = torch.empty(head_bytes, dtype=torch.uint8, device=device)
        _broadcast(group, head)
        data = torch.empty(data_bytes, dtype=torch.uint8, device=device)
        _broadcast(group, data)
        header = json.loads(head.cpu().numpy().tobytes())
        if header["version"] != version:
            error = f"weight sync: expected version {version}, the learner sent {header['version']}"
        if error:
            continue
        offset = 0
        for name, dtype_name, shape in header["params"]:
            dtype = getattr(torch, dtype_name)
            size = dtype.itemsize * _numel(shape)
            yield name, data[offset : offset + size].view(dtype).view(shape)
            offset += size + -size % ALIGN


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# ---------------------------------------------------------------- fingerprints

_CHUNK = 1 << 24  # elements per step of a fingerprint: bounds its int64 copy (128 MiB)
_MODULUS = 65521  # position weights 1..65521 (a prime): a moved or swapped element changes the sum
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
# device -> i mod 65521 + 1 (int32), at most 65521 + _CHUNK of them (64 MiB), kept for the run
_POSITIONS: dict[torch.device, torch.Tensor] = {}


def _position_weights(start: int, n: int, device: torch.device) -> torch.Tensor:
    """(start + i) mod 65521 + 1 for i < n (int32), sliced from one period plus a chunk that
    is built once per device: recomputing them took ~10x the fingerprint itself."""
    offset = start % _MODULUS
    cached = _POSITIONS.get(device)
    if cached is None or cached.numel() < offset + n:
        cached = torch.arange(_MODULUS + n, dtype=torch.int32, device=device) % _MODULUS + 1
        _POSITIONS[device] = cached
    return cached[offset : offset + n]


def tensor_fingerprint(tensor: torch.Tensor) -> int:
    """An exact checksum of a tensor's bits: sum_i bits_i * (i mod 65521 + 1), wrapping mod 2^64.

    Integer arithmetic, so it is the same on any device and in any summation order (the learner
    computes it on its weights, an engine on the stream it loads), and cheap on a GPU: no copy
    to the host, no hashing on the CPU. One flipped bit, a value moved, or a dtype changed by a
    cast all change it. Words of 1 or 2 bytes multiply in int32, exactly (|bits| <= 2^15 and
    weights < 2^16), and sum in int64: bf16 weights cost a quarter of int64's memory traffic.
    """
    flat = tensor.detach().contiguous().reshape(-1)
    words = flat.view(_BITS[flat.element_size()])
    wide = torch.int32 if flat.element_size() <= 2 else torch.int64
    total = torch.zeros((), dtype=torch.int64, device=flat.device)
    for start in range(0, words.numel(), _CHUNK):
        part = words[start : start + _CHUNK].to(wide)
        weights = _position_weights(start, part.numel(), flat.device)
        total += (part * weights).sum(dtype=torch.int64)
    return int(total)


Fingerprints = dict[str, tuple[str, list[int], int]]  # name -> (dtype, shape, tensor_fingerprint)


def fingerprints_of(weights: Iterable[tuple[str, torch.Tensor]]) -> Fingerprints:
    """The fingerprint of every (name, tensor) of a stream."""
    watcher = Fingerprinter()
    for _ in watcher.watch(weights):
        pass
    return watcher.seen


def fingerprint_mismatch(expected: Fingerprints, got: Fingerprints) -> str:
    """What differs between the learner's fingerprints and an engine's, in words; "" if equal."""
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    changed = sorted(n for n in set(expected) & set(got) if tuple(expected[n]) != tuple(got[n]))
    if not (missing or extra or changed):
        return ""
    parts = []
    for what, names in (("not loaded", missing), ("not the learner's", changed), ("extra", extra)):
        if names:
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            parts.append(f"{len(names)} of {len(expected)} tensors {what} ({shown})")
    return "; ".join(parts)


class Fingerprinter:
    """Wraps a (name, tensor) stream, fingerprinting each tensor as it passes."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[str, list[int], int]] = {}

    def watch(
        self, weights: Iterable[tuple[str, torch.Tensor]]
    ) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in weights:
            dtype = str(tensor.dtype).removeprefix("torch.")
            self.seen[name] = (dtype, list(tensor.shape), tensor_fingerprint(tensor))
            yield name, tensor
