"""Waiting on Ray: every wait has a timeout, and every failure names the phase and the actor."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import ray


class RemoteError(RuntimeError):
    """A remote call failed or did not answer in time; the message names phase and actor."""


def _cause(err: Exception) -> str:
    cause = getattr(err, "cause", None)  # RayTaskError carries the remote exception
    if isinstance(cause, Exception):
        return f"{type(cause).__name__}: {' '.join(str(cause).split())}"
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__


def wait_all(
    refs: Sequence[Any],
    phase: str,
    names: Sequence[str],
    timeout_s: float,
    fetch: Sequence[bool] | None = None,
) -> list[Any]:
    """Results of refs within timeout_s; names[i] labels refs[i] in errors ("rollout engine 0").

    The first remote error fails at once (the others may be blocked in a collective waiting for
    it). Where fetch[i] is False, refs[i] is returned unfetched once it is ready.
    """
    fetch = fetch or [True] * len(refs)
    index = {ref: i for i, ref in enumerate(refs)}
    results: dict[int, Any] = {}
    deadline = time.monotonic() + timeout_s
    pending = list(refs)
    while pending:
        left = max(0.0, deadline - time.monotonic())
        ready, pending = ray.wait(pending, num_returns=1, timeout=left, fetch_local=False)
        if not ready:
            late = ", ".join(names[index[r]] for r in sorted(pending, key=index.get))
            raise RemoteError(f"{phase}: {late} did not answer within {timeout_s:g} s")
        i = index[ready[0]]
        if not fetch[i]:
            results[i] = ready[0]
            continue
        try:
            results[i] = ray.get(ready[0], timeout=max(left, 1.0))  # ready: returns at once
        except ray.exceptions.RayActorError as e:
            raise RemoteError(f"{phase}: {names[i]} died: {_cause(e)}") from None
        except ray.exceptions.RayError as e:
            raise RemoteError(f"{phase}: {names[i]} failed: {_cause(e)}") from None
    return [results[i] for i in range(len(refs))]
