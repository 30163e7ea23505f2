"""The bucketed broadcast protocol, on a gloo group of threads in this process (no Ray)."""

from __future__ import annotations

import socket
import threading

import pytest
import torch

from instructray.actors.weight_sync import (
    fingerprint_mismatch,
    fingerprints_of,
    open_group,
    receive_weights,
    send_weights,
    tensor_fingerprint,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weights() -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        ("embed.weight", torch.randn(7, 5, generator=g)),  # 140 bytes
        ("norm.weight", torch.randn(3, generator=g).to(torch.bfloat16)),  # 6 bytes: odd size
        ("big.weight", torch.randn(40, 10, generator=g)),  # 1600 bytes > bucket: alone
        ("steps", torch.tensor([3, 1, 4], dtype=torch.int64)),
        ("scalar", torch.tensor(2.5)),
    ]


def _run(world: int, sender, receiver) -> list:
    """Rank 0 runs sender(group), ranks 1.. run receiver(group); -> results by rank."""
    port, results, errors = _free_port(), [None] * world, []

    def body(rank: int) -> None:
        try:
            group = open_group("127.0.0.1", port, rank, world, "gloo", timeout_s=20)
            results[rank] = (sender if rank == 0 else receiver)(group)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append((rank, e))

    threads = [threading.Thread(target=body, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a rank hung"
    if errors:
        raise errors[0][1]
    return results


def test_buckets_arrive_bitwise_in_order_on_every_receiver():
    sent = _weights()
    cpu = torch.device("cpu")
    results = _run(
        3,
        lambda g: send_weights(g, iter(sent), 7, bucket_bytes=256, device=cpu),
        lambda g: [(n, t.clone()) for n, t in receive_weights(g, 7, cpu)],
    )
    assert results[0] == sum(t.numel() * t.element_size() for _, t in sent)
    for received in results[1:]:
        assert [n for n, _ in received] == [n for n, _ in sent]
        for (_, a), (_, b) in zip(received, sent, strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert torch.equal(a, b)


def test_a_receiver_expecting_another_version_fails_naming_both_and_the_group_survives():
    cpu = torch.device("cpu")
    sent = _weights()

    def sender(group):
        send_weights(group, iter(sent), 4, bucket_bytes=256, device=cpu)
        return send_weights(group, iter(sent), 5, bucket_bytes=256, device=cpu)

    def receiver(group):
        try:
            list(receive_weights(group, 3, cpu))
        except RuntimeError as e:
            first = str(e)
        return first, [n for n, _ in receive_weights(group, 5, cpu)]

    results = _run(2, sender, receiver)
    assert results[1] == (
        "weight sync: expected version 3, the learner sent 4",
        [n for n, _ in sent],
    )


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="gloo or nccl"):
        open_group("127.0.0.1", _free_port(), 0, 1, "mpi", timeout_s=5)


# ---------------------------------------------------------------- fingerprints


def test_fingerprint_is_exact_on_the_bits_and_does_not_depend_on_chunks(monkeypatch):
    from instructray.actors import weight_sync

    g = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.bfloat16, torch.int64, torch.uint8):
        x = (torch.randn(37, 11, generator=g) * 100).to(dtype)
        fp = tensor_fingerprint(x)
        assert tensor_fingerprint(x.clone()) == fp
        assert tensor_fingerprint(x.t().contiguous().t()) == fp  # layout of the same values
        monkeypatch.setattr(weight_sync, "_CHUNK", 5)  # many chunks, one sum
        assert tensor_fingerprint(x) == fp
        monkeypatch.undo()
        swapped = x.clone().reshape(-1)
        swapped[[0, 1]] = swapped[[1, 0]]
        if not torch.equal(swapped, x.reshape(-1)):
            assert tensor_fingerprint(swapped) != fp  # a value moved
        flipped = x.clone().reshape(-1)
        flipped.view(torch.uint8)[3] ^= 1  # one bit
        assert tensor_fingerprint(flipped) != fp
    w = torch.randn(8, generator=g)
    assert tensor_fingerprint(w) != tensor_fingerprint(w.to(torch.bfloat16))  # a cast shows
    assert tensor_fingerprint(w) != tensor_fingerprint(w.to(torch.bfloat16).float())


def test_fingerprint_is_its_formula_past_one_period_of_the_weights(monkeypatch):
    from instructray.actors import weight_sync

    g = torch.Generator().manual_seed(2)
    for dtype, words in ((torch.bfloat16, torch.int16), (torch.float32, torch.int32)):
        x = torch.randn(70_003, generator=g).to(dtype)  # positions past 65521 wrap to weight 1
        bits = x.view(words).tolist()
        want = sum(b * (i % 65521 + 1) for i, b in enumerate(bits)) % 2**64
        assert tensor_fingerprint(x) % 2**64 == want
        monkeypatch.setattr(weight_sync, "_CHUNK", 4099)  # chunks that start mid-period
        monkeypatch.setattr(weight_sync, "_POSITIONS", {})
        assert tensor_fingerprint(x) % 2**64 == want
        monkeypatch.undo()


def test_fingerprint_mismatch_names_what_differs():
    weights = dict(_weights())
    learner = fingerprints_of(weights.items())
    assert fingerprint_mismatch(learner, fingerprints_of(reversed(weights.items()))) == ""
    half = fingerprints_of(list(weights.items())[::2])
    assert fingerprint_mismatch(learner, half) == ("2 of 5 tensors not loaded (norm.weight, steps)")
    moved = dict(weights, **{"embed.weight": weights["embed.weight"] + 1e-6})
    assert fingerprint_mismatch(learner, fingerprints_of(moved.items())) == (
        "1 of 5 tensors not the learner's (embed.weight)"
    )
