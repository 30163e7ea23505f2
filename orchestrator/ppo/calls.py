"""Driver-to-actor calls of a PPO run: every wait with a timeout, and an actor that died or was
restarted recovered and its call redone.

Calls are written as calls (`lambda actor, *args: actor.score.remote(*args)`), so grep finds
every driver -> actor edge. Actor lists are read from the Roles at each call: a list may change
during a run (a rebuilt learner; engines that join or leave the pool, orchestrator/ppo/pool.py).
A call keeps the actors it started on: an engine that left the pool while its call was in flight
(its node left the cluster) has that call redone by another engine.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

from instructray.actors.faults import kills_at
from instructray.actors.remote import ActorDied, RemoteError, wait_alive, wait_all
from instructray.orchestrator.config import Config
from instructray.orchestrator.ppo.roles import Roles

logger = logging.getLogger(__name__)

Call = Callable[..., Any]  # (actor, *args) -> ObjectRef


class RestartsExhausted(RemoteError):
    """A rollout, reward or reference actor died more often than run.max_actor_restarts."""


Redo = Callable[..., Any]  # (i[, actor]) -> ObjectRef: call i again (on another actor)
Lost = Callable[[Any], Any]  # (dead engine) -> the engine to redo its call on, or None


class Pending:
    """Calls started on the actors of one role, not yet waited for."""

    def __init__(self, role: str, actors: list[Any], refs: list[Any], redo: Redo):
        self.role, self.actors, self.refs, self.redo = role, actors, refs, redo


class RoleCalls:
    """Calls on the actors of each role, recovering a restarted one. `on_restart(role, actor)`
    runs once Ray has restarted the actor (a rollout engine gets the current weights there);
    `lost(engine)` (the engine pool's) says whether a dead engine leaves the pool instead."""

    def __init__(self, cfg: Config, roles: Roles, on_restart: Callable[[str, Any], None]):
        self.cfg, self.roles, self.on_restart = cfg, roles, on_restart
        self.lost: Lost | None = None

    def actors(self, role: str) -> list[Any]:
        return {
            "rollout": self.roles.engines,
            "reward": self.roles.rewards,
            "reference": self.roles.references,
            "learner": self.roles.learner.actors,
        }[role]

    def start(self, role: str, call: Call, args: list[tuple]) -> Pending:
        """call(actor i, *args[i]) on the first len(args) actors of role."""
        actors = list(self.actors(role)[: len(args)])

        def redo(i: int, actor: Any = None) -> Any:
            return call(actors[i] if actor is None else actor, *args[i])

        return Pending(role, actors, [redo(i) for i in range(len(args))], redo)

    def wait(self, pending: Pending, phase: str) -> list[Any]:
        """The results of started calls within run.timeout_s; a dead actor is recovered and
        its call redone."""
        role = pending.role
        return wait_all(
            pending.refs,
            phase,
            names(display(role), pending.refs),
            self.cfg.run.timeout_s,
            retry=self.retry(role, pending.redo, pending.actors),
        )

    def run(self, role: str, call: Call, args: list[tuple], phase: str) -> list[Any]:
        return self.wait(self.start(role, call, args), phase)

    def retry(
        self, role: str, redo: Redo, actors: list[Any] | None = None
    ) -> Callable[[int, Exception], Any]:
        """A wait_all retry: recover actor i of role (of `actors`, default the role's current
        list) after it died, then redo its call; an engine that left the pool instead has its
        call redone by another."""

        def retry(i: int, error: Exception) -> Any:
            # An engine's weight update fails too when the learner rank that exported the weights
            # died: that is the learner's failure (rebuilt from a checkpoint), not the engine's.
            dead = getattr(error, "actor_id", None)
            ranks = [a._actor_id.hex() for a in self.roles.learner.actors]
            if dead in ranks:
                name = f"rank {ranks.index(dead)}"
                raise ActorDied(f"learner sync: {name} died", "learner sync", name) from None
            actor = (actors or self.actors(role))[i]
            if role == "rollout" and self.lost is not None:
                other = self.lost(actor)
                if other is not None:
                    return redo(i, other)
            self.recover(role, actor, i)
            return redo(i)

        return retry

    def recover(self, role: str, actor: Any, i: int) -> None:
        """Wait for Ray to restart the actor (its constructor reloads the model), then
        on_restart(role, actor)."""
        name = f"{display(role)} {i}"
        logger.warning("%s died or was restarted; recovering it", name)
        self.wait_alive(actor, "restart", name)
        self.on_restart(role, actor)

    def wait_alive(self, actor: Any, phase: str, name: str) -> None:
        """Wait for Ray to restart actor; past run.max_actor_restarts, RestartsExhausted."""
        try:
            wait_alive(actor, phase, name, self.cfg.run.start_timeout_s)
        except RemoteError as e:
            raise RestartsExhausted(
                f"{e} (restarted up to run.max_actor_restarts = "
                f"{self.cfg.run.max_actor_restarts} times)"
            ) from None

    def restarts(self) -> int:
        """Restarts of the rollout, reward and reference actors so far, as Ray's GCS counts them
        (also those Ray made before any call noticed)."""
        from ray._private.state import actors as actor_table

        total = 0
        for role in ("rollout", "reward", "reference"):
            for actor in self.actors(role):
                total += int(actor_table(actor._actor_id.hex()).get("NumRestarts", 0))
        return total

    def kill_for_test(self, phase: str, step: int) -> None:
        """Test hook (actors/faults.py): kill actor 0 of a role as the step enters phase."""
        import ray

        for role in kills_at(phase, step):
            ray.kill(self.actors(role)[0], no_restart=False)


@contextlib.contextmanager
def learner_deaths(phase: str) -> Iterator[None]:
    """A dead learner rank inside: raise it as the learner's (a phase starting "learner"),
    which the run answers by rebuilding the learner from its latest checkpoint."""
    try:
        yield
    except ActorDied as e:
        if not e.name.startswith("learner"):
            raise
        raise ActorDied(f"{phase}: {e.name} died", phase, e.name) from None


def display(role: str) -> str:
    return "rollout engine" if role == "rollout" else role


def names(role: str, refs: list) -> list[str]:
    return [f"{role} {i}" for i in range(len(refs))]
