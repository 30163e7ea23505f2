"""The rollout engine pool of a PPO run: engines join and leave between steps.

- Its target: `instructray scale` (orchestrator/output/scale_requests.py), or with
  rollout.autoscale rollout.max_engines, which the run also asks Ray's autoscaler for
  (`request_resources`), so that an autoscaling cluster brings up nodes for them.
- A joining engine gets a placement group of its own (a group cannot gain bundles). Once placed it
  starts and loads the model, takes the current weights under the current version and is verified
  on the probe batch (WeightSync.bring_up); only then does it serve and join the load split. A
  request made by hand that is not placed within run.start_timeout_s (or not started within as
  long again) is dropped with a warning and the run goes on; with autoscale an engine waits for
  a node as long as it takes.
- A leaving engine leaves between steps, when its share of the last step is done (nothing of it
  is in flight): it is stopped and its group removed. With a broadcast transport the weight group
  is formed again (a torch.distributed group cannot grow or shrink).
- With autoscale, an engine whose node left the cluster leaves the pool (down to
  rollout.min_engines; below, it is recovered as any dead engine is), and its share of the call
  in flight is redone by another engine (RoleCalls.lost).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray

from instructray.actors.remote import RemoteError
from instructray.orchestrator.cluster import Slot, describe, role_requests
from instructray.orchestrator.config import Config
from instructray.orchestrator.config.checks import max_engines
from instructray.orchestrator.output.scale_requests import ScaleRequests
from instructray.orchestrator.ppo.roles import Roles, start_engine
from instructray.orchestrator.ppo.weights import WeightSync

logger = logging.getLogger(__name__)

NODE_GONE_WAIT_S = 10.0  # how long a dead engine's node may take to be reported gone


@dataclass
class Joining:
    """An engine on its way into the pool: placed (its group ready), then started."""

    id: int
    slot: Slot
    placed: Any  # ObjectRef: the group is placed
    deadline: float  # time.monotonic() to be serving by
    actor: Any = None
    started: Any = None  # ObjectRef: its constructor ran


class EnginePool:
    """Grows and shrinks roles.engines between steps; `on_change()` after each join or leave
    (the run writes placement.json there)."""

    def __init__(
        self,
        cfg: Config,
        roles: Roles,
        weights: WeightSync,
        requests: ScaleRequests | None = None,
        on_change: Callable[[], None] | None = None,
    ):
        self.cfg, self.roles, self.weights, self.requests = cfg, roles, weights, requests
        self.on_change = on_change or (lambda: None)
        n = len(roles.engines)
        self.ids = list(range(n))  # each serving engine's id, in roles.engines order
        self.next_id = n
        self.autoscale = cfg.rollout.autoscale
        self.target = max_engines(cfg) if self.autoscale else n
        self.joining: list[Joining] = []
        self.joins = self.leaves = 0
        self.asked: list[dict[str, float]] | None = None  # of the autoscaler, last

    # ------------------------------------------------------------------ between steps

    def apply(self) -> None:
        """Take the newest scale request, move joining engines on, and start or stop engines
        to meet the target. Never waits for a placement or an engine's start."""
        asked = self.requests.poll() if self.requests is not None else None
        if asked is not None:
            self.target = self._bounded(asked)
        if self.autoscale:
            self._drop_gone()
        self._advance()
        self._resize()
        self._ask_autoscaler()

    def _bounded(self, asked: int) -> int:
        r = self.cfg.rollout
        low, high = (r.min_engines, max_engines(self.cfg)) if self.autoscale else (1, 0)
        high = high or r.prompts_per_step  # by hand: as many as there are prompts to share
        target = min(max(asked, low), high)
        logger.info(
            "rollout: scale request for %d engine(s)%s; %d serve now",
            asked,
            f" (bounded to {target}: {low}..{high})" if target != asked else "",
            len(self.roles.engines),
        )
        return target

    def _resize(self) -> None:
        while len(self.roles.engines) + len(self.joining) < self.target:
            self._start_join()
        while self.joining and len(self.roles.engines) + len(self.joining) > self.target:
            self._drop(self.joining[-1], "no longer wanted")
        left = False
        while len(self.roles.engines) > self.target:
            self._leave(len(self.roles.engines) - 1, "scaled down")  # the last to join first
            left = True
        if left and self.weights.broadcast:
            self.weights.reform()

    def _drop_gone(self) -> None:
        """Engines whose node left the cluster since the last step leave the pool (down to
        rollout.min_engines): a call on one would wait for a restart that cannot come."""
        left = False
        for i in reversed(range(len(self.roles.engines))):
            if len(self.roles.engines) <= self.cfg.rollout.min_engines:
                break
            slot = self.roles.placement.slots["rollout"][i]
            if node_gone(self.roles.engines[i], slot, wait_s=0.0):
                self._leave(i, "its node left the cluster")
                left = True
        if left and self.weights.broadcast:
            self.weights.reform()

    def _start_join(self) -> None:
        slot = self.roles.placement.add_engine_group(self.cfg, self.next_id)
        # By hand: placed within run.start_timeout_s, then started within as long again.
        # Autoscale: a node may come any time.
        wait = float("inf") if self.autoscale else self.cfg.run.start_timeout_s
        self.joining.append(Joining(self.next_id, slot, slot.pg.ready(), time.monotonic() + wait))
        logger.info(
            "rollout engine %d: waiting for its placement (%s)",
            self.next_id,
            describe([slot.resources]),
        )
        self.next_id += 1

    def _advance(self) -> None:
        for j in list(self.joining):
            if j.actor is None and ray.wait([j.placed], timeout=0)[0]:
                j.actor = start_engine(self.cfg, j.slot.options())
                j.started = j.actor.__ray_ready__.remote()
                j.deadline = time.monotonic() + self.cfg.run.start_timeout_s
                logger.info("rollout engine %d: placed, starting", j.id)
            if j.actor is not None and ray.wait([j.started], timeout=0)[0]:
                self._join(j)
            elif time.monotonic() > j.deadline:
                what = "placed" if j.actor is None else "started"
                self._drop(
                    j,
                    f"not {what} within run.start_timeout_s = {self.cfg.run.start_timeout_s:g} s "
                    f"(free now: {_free_now()}); the run goes on with {len(self.roles.engines)}",
                )
                if not self.autoscale:
                    self.target = len(self.roles.engines) + len(self.joining)

    def _join(self, j: Joining) -> None:
        self.joining.remove(j)
        self.roles.engines.append(j.actor)
        self.roles.placement.slots["rollout"].append(j.slot)
        self.ids.append(j.id)
        try:
            ray.get(j.started, timeout=self.cfg.run.timeout_s)  # its constructor's error
            diff = self.weights.bring_up(j.actor)
        except (ray.exceptions.RayError, RemoteError) as e:
            self._leave(len(self.roles.engines) - 1, f"failed to join: {e}", joined=False)
            if not self.autoscale:
                self.target = len(self.roles.engines) + len(self.joining)
            return
        self.joins += 1
        node = self.roles.placement.nodes()["rollout"][-1]
        logger.info(
            "rollout engine %d joined on node %s at weight version %d (max log-prob diff "
            "%.3g); %d engines serve",
            j.id,
            node[:12],
            self.weights.version,
            diff,
            len(self.roles.engines),
        )
        self.on_change()

    def _drop(self, j: Joining, why: str) -> None:
        self.joining.remove(j)
        if j.actor is not None:
            ray.kill(j.actor, no_restart=True)
        self.roles.placement.release(j.slot)
        (logger.warning if why != "no longer wanted" else logger.info)(
            "rollout engine %d dropped: %s", j.id, why
        )

    def _leave(self, i: int, why: str, joined: bool = True) -> None:
        actor = self.roles.engines.pop(i)
        slot = self.roles.placement.slots["rollout"].pop(i)
        engine_id = self.ids.pop(i)
        ray.kill(actor, no_restart=True)
        self.roles.placement.release(slot)
        if joined:
            self.leaves += 1
        (logger.info if why == "scaled down" else logger.warning)(
            "rollout engine %d left the pool (%s); %d engines serve",
            engine_id,
            why,
            len(self.roles.engines),
        )
        self.on_change()

    def _ask_autoscaler(self) -> None:
        """With autoscale: ask for every actor of the run with `target` engines (a standing
        request, replaced when the target changes)."""
        if not self.autoscale:
            return
        bundles = [b for reqs in role_requests(self.cfg, self.target).values() for b in reqs]
        if bundles != self.asked:
            from ray.autoscaler.sdk import request_resources

            request_resources(bundles=bundles)
            self.asked = bundles

    # ------------------------------------------------------------------ during a step

    def lost(self, engine: Any) -> Any:
        """A call on `engine` failed with its death. With autoscale, when its node left the
        cluster and more than rollout.min_engines serve, it leaves the pool; -> the engine to
        redo its call on, or None (recover it as any dead engine)."""
        ids = [e._actor_id for e in self.roles.engines]
        if not self.autoscale or engine._actor_id not in ids:
            return None
        i = ids.index(engine._actor_id)
        slot = self.roles.placement.slots["rollout"][i]
        if len(ids) <= self.cfg.rollout.min_engines or not node_gone(engine, slot):
            return None
        self._leave(i, "its node left the cluster")
        return self.roles.engines[i % len(self.roles.engines)]

    def metrics(self) -> dict[str, float]:
        return {
            "rollout/engines": len(self.roles.engines),
            "rollout/engines_joining": len(self.joining),
            "rollout/engine_joins": self.joins,
            "rollout/engine_leaves": self.leaves,
        }

    def close(self) -> None:
        """Stop engines still joining (their groups go with the run's placement) and withdraw
        the autoscaler request."""
        for j in list(self.joining):
            if j.actor is not None:
                ray.kill(j.actor, no_restart=True)
        self.joining = []
        if self.asked is not None:
            from ray.autoscaler.sdk import request_resources

            request_resources(bundles=[])
            self.asked = None


def node_gone(actor: Any, slot: Slot, wait_s: float = NODE_GONE_WAIT_S) -> bool:
    """Whether a dead engine's node left the cluster: Ray restarts it but its group's bundle
    is being placed again (state RESCHEDULING; the actor table still names a live node then),
    or its last node is gone. Waits up to wait_s for the cluster to say so; False once Ray
    serves the engine again."""
    from ray._private.state import actors as actor_table
    from ray.util import placement_group_table

    deadline = time.monotonic() + wait_s
    while True:
        info = actor_table(actor._actor_id.hex())
        if info.get("State") == "ALIVE":
            return False
        node = (info.get("Address") or {}).get("NodeID")
        alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
        if placement_group_table(slot.pg).get("state") == "RESCHEDULING" or (
            node and node not in alive
        ):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)


def _free_now() -> dict[str, float]:
    free = ray.available_resources()
    return {k: round(v, 3) for k, v in sorted(free.items()) if k in ("CPU", "GPU")}
