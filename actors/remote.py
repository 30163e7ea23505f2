"""Waiting on Ray: every wait has a timeout, and every failure names the phase and the actor."""

from __future__ import annotations

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


def wait_all(refs: Sequence[Any], phase: str, names: Sequence[str], timeout_s: float) -> list[Any]:
    """ray.get(refs) within timeout_s; names[i] labels refs[i] in errors ("rollout 0", ...)."""
    ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    if pending:
        late = [names[i] for i, r in enumerate(refs) if r in set(pending)]
        raise RemoteError(f"{phase}: {', '.join(late)} did not answer within {timeout_s:.0f} s")
    results = []
    for ref, name in zip(refs, names, strict=True):
        try:
            results.append(ray.get(ref, timeout=timeout_s))
        except ray.exceptions.RayActorError as e:
            raise RemoteError(f"{phase}: {name} died: {_cause(e)}") from None
        except ray.exceptions.RayTaskError as e:
            raise RemoteError(f"{phase}: {name} failed: {_cause(e)}") from None
    return results
