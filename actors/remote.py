"""Waiting on Ray: every wait has a timeout, and every failure names the phase and the actor."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import ray


class RemoteError(RuntimeError):
    """A remote call failed or did not answer in time; the message names phase and actor."""


class ActorDied(RemoteError):
    """An actor's process died during a call; `phase` and `name` say which and where."""

    def __init__(self, message: str, phase: str, name: str):
        super().__init__(message)
        self.phase, self.name = phase, name


class ActorRestarted(RuntimeError):
    """Raised by a restarted actor that lacks state the caller expects (e.g. weights)."""


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
    retry: Callable[[int, Exception], Any] | None = None,
) -> list[Any]:
    """Results of refs within timeout_s; names[i] labels refs[i] in errors ("rollout engine 0").

    The first remote error fails at once (the others may be blocked in a collective waiting for
    it). Where fetch[i] is False, refs[i] is returned unfetched once it is ready. With retry,
    the death of the actor behind refs[i] (or its ActorRestarted refusal) calls retry(i, error),
    which brings the restarted actor back (or raises) and returns a new ref for the same work
    (a fresh wait). Without retry, a death raises ActorDied.
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
        except ray.exceptions.RayError as e:
            died = isinstance(e, ray.exceptions.RayActorError)
            restarted = isinstance(getattr(e, "cause", None), ActorRestarted)
            if died and retry is None:
                message = f"{phase}: {names[i]} died: {_cause(e)}"
                raise ActorDied(message, phase, names[i]) from None
            if retry is None or not (died or restarted):
                raise RemoteError(f"{phase}: {names[i]} failed: {_cause(e)}") from None
            again = retry(i, e)  # the actor is back: the same work again, with a fresh wait
            index[again] = i
            pending.append(again)
            deadline = max(deadline, time.monotonic() + timeout_s)
    return [results[i] for i in range(len(refs))]


def wait_alive(actor: Any, phase: str, name: str, timeout_s: float) -> None:
    """Wait until a restarting actor serves again (its constructor ran) or fail naming it."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        try:
            ray.get(actor.__ray_ready__.remote(), timeout=max(left, 1.0))
            return
        except ray.exceptions.ActorUnavailableError:  # still restarting: ask again shortly
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        except ray.exceptions.GetTimeoutError:
            break
        except ray.exceptions.RayActorError as e:
            raise RemoteError(f"{phase}: {name} died: {_cause(e)}") from None
    raise RemoteError(f"{phase}: {name} did not come back within {timeout_s:g} s")
