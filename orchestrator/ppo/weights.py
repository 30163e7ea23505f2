"""The weight sync of a PPO run: the learner's policy weights to every rollout engine under a
rising version, then checked on each engine (version, weight fingerprints bit for bit, the
probe batch's log-probs within the dtype's rounding). Through the object store (one copy, in
buckets of rollout.sync_bucket_mib, that each engine loads) or a broadcast group (learner rank 0
and every engine worker: gloo or NCCL).
A LoRA policy sends its adapter alone (rollout.lora_sync: adapter, through the object store;
the engines serve it through vLLM's LoRA path), or its merged weights like any policy.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from instructray.actors.remote import ActorDied, RemoteError, wait_all
from instructray.orchestrator.config import Config
from instructray.orchestrator.config.lora import adapter_sync
from instructray.orchestrator.ppo.calls import RoleCalls, learner_deaths, names
from instructray.orchestrator.ppo.roles import Roles
from instructray.orchestrator.ppo.sync_check import (
    WeightSyncError,
    logprob_diff_stats,
    logprob_problem,
    sync_logprob_limits,
    sync_problem,
)

logger = logging.getLogger(__name__)

PROBE_ROWS = 4  # the probe batch: the run's first sequences, fixed for the run


class WeightSync:
    """Owns the weight version and the probe batch; brings every engine, or one restarted
    engine, to the learner's current weights."""

    def __init__(self, cfg: Config, roles: Roles, calls: RoleCalls):
        self.cfg, self.roles, self.calls = cfg, roles, calls
        self.version = 0
        self.probe: list[list[int]] | None = None
        self.adapter = adapter_sync(cfg)  # the LoRA adapter alone, through the object store
        self.broadcast = cfg.rollout.weight_sync != "object_store" and not self.adapter
        self.bytes = 0  # sent to each engine by the last sync (the tensors' bytes)
        self.buckets = 0  # the object store's buckets of the last full-weight sync
        # The last check's probe log-prob differences: mean, p99, max (the worst engine's each)
        self.diffs = {"mean": 0.0, "p99": 0.0, "max": 0.0}

    def set_probe(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> float:
        """Fix the probe batch (the first sequences of the run) and check the engines against
        the learner on it; -> the initial max log-prob difference."""
        rows = zip(prompt_ids[:PROBE_ROWS], response_ids[:PROBE_ROWS], strict=True)
        self.probe = [p + r for p, r in rows]
        return self.verify()

    def open_group(self) -> None:
        """Broadcast transports: learner rank 0 and every engine worker form the weight group."""
        r = self.cfg.rollout
        engines = self.roles.engines
        world = 1 + len(engines) * r.tensor_parallel_size
        host, port, refs = self.roles.learner.open_weight_group(world, r.weight_sync)
        # Both sides' group timeout: run.timeout_s (the learner's too), which bounds how long
        # the others wait in a collective on a member that died.
        group_timeout, timeout = self.cfg.run.timeout_s, self.cfg.run.start_timeout_s
        refs += [
            e.join_weight_group.remote(
                host, port, 1 + i * r.tensor_parallel_size, world, r.weight_sync, group_timeout
            )
            for i, e in enumerate(engines)
        ]
        with learner_deaths("learner weight group"):
            wait_all(
                refs, "weight group", ["learner rank 0"] + names("rollout engine", engines), timeout
            )

    def sync(self) -> float:
        """Push the learner's weights to every engine (new version), then verify; -> max diff."""
        self.version += 1
        engines = list(self.roles.engines)
        if not self.broadcast:
            weights = self._export()  # ObjectRefs: one copy in the store
            refs = [self._update(e, weights) for e in engines]
            # A restarted engine gets this version while it recovers; then only confirm it.
            retry = self.calls.retry(
                "rollout", lambda i, other=None: (other or engines[i]).version.remote(), engines
            )
            wait_all(
                refs,
                "weight sync",
                names("rollout engine", refs),
                self.cfg.run.timeout_s,
                retry=retry,
            )
        else:
            try:
                self._broadcast(self.version)
            except RemoteError as e:  # a member died, or a send or receive broke with it
                if isinstance(e, ActorDied) and e.phase.startswith("learner"):
                    raise  # the learner is rebuilt, and the group with it
                self.reform(e)
                self._broadcast(self.version, again=True)
        # Before the first step (a checkpoint of step 0's start) there is no probe batch yet:
        # the first step fixes it and checks every engine then (set_probe).
        return self.verify() if self.probe is not None else 0.0

    def resend(self, engine: Any, phase: str = "restart") -> None:
        """A restarted (or joining) engine receives the current weights, under the current
        version, before it serves (with a broadcast transport, in a group formed again)."""
        if self.broadcast:
            self.reform()  # the restarted engine left the old group; a new one was never in it
            if self.version > 0:
                self._broadcast(self.version, again=True)
        elif self.version > 0:
            name, timeout = f"rollout engine {self.index(engine)}", self.cfg.run.start_timeout_s
            # Two calls in flight on a restarted engine (pipelined generation) recover it twice.
            [held] = wait_all([engine.version.remote()], phase, [name], timeout)
            if held >= self.version:
                return
            ref = self._update(engine, self._export())
            wait_all([ref], phase, [name], timeout)

    def _export(self) -> Any:
        """What the object-store transport sends: the adapter's ObjectRef, or the ObjectRefs
        of the weights' buckets (rollout.sync_bucket_mib each at most)."""
        learner = self.roles.learner
        if self.adapter:
            return learner.export_adapter()
        parts = learner.export_weight_buckets()
        self.buckets = len(parts)
        return parts

    def _update(self, engine: Any, payload: Any) -> Any:
        """Start an engine's load of the exported payload under the current version."""
        if self.adapter:
            return engine.update_adapter.remote(self.version, payload)
        return engine.update_weights.remote(self.version, payload)

    def index(self, engine: Any) -> int:
        """An engine's place in the pool (its name in messages)."""
        ids = [e._actor_id for e in self.roles.engines]
        return ids.index(engine._actor_id) if engine._actor_id in ids else len(ids)

    def bring_up(self, engine: Any) -> float:
        """An engine that joins the pool (already in roles.engines): the current weights under
        the current version, verified against the learner on the probe batch (once the run has
        one) before it serves; -> its max log-prob difference."""
        self.resend(engine, "engine join")
        if self.probe is None:
            return 0.0
        i = self.index(engine)
        learner = self.roles.learner.weights_state(self.probe, self.adapter)
        [state] = wait_all(
            [engine.weights_state.remote(self.probe)],
            "engine join",
            [f"rollout engine {i}"],
            self.cfg.run.timeout_s,
        )
        return self._check(i, state, learner)["max"]

    def _broadcast(self, version: int, again: bool = False) -> None:
        """Learner rank 0 broadcasts the weights to every engine as version (again: engines
        that hold it already take it once more: a broadcast redone after a restart)."""
        refs = [e.receive_weights.remote(version, again) for e in self.roles.engines]
        sends = self.roles.learner.broadcast_weights(version)
        all_names = names("rollout engine", refs) + names("learner rank", sends)
        with learner_deaths("learner sync"):
            wait_all(refs + sends, "weight sync", all_names, self.cfg.run.timeout_s)

    def reform(self, error: Exception | None = None) -> None:
        """A member of the broadcast group died: wait for every engine to serve again (a
        restarted one, or one whose half-done receive fails by the group's timeout), then form
        a new group. Restarts stay bounded by run.max_actor_restarts."""
        if error is not None:
            logger.warning("%s; forming the weight group again", error)
        for i, engine in enumerate(self.roles.engines):
            self.calls.wait_alive(engine, "weight group", f"rollout engine {i}")
        self.open_group()

    def verify(self) -> float:
        """Check every engine against the learner; -> max |engine - learner| probe log-prob.

        Each engine must hold the current version, its loader must have taken in exactly the
        learner's weights (their fingerprints, bit for bit, every tensor), and its log-probs of
        the probe batch must agree within the dtype's rounding (the mean and 99th percentile of
        the differences: sync_logprob_limits). Anything else stops the run (WeightSyncError) with
        what differs. `diffs` keeps the worst engine's mean, p99 and max.
        """
        assert self.probe is not None
        n = len(self.roles.engines)
        pending = self.calls.start(
            "rollout", lambda engine, probe: engine.weights_state.remote(probe), [(self.probe,)] * n
        )
        learner = self.roles.learner.weights_state(self.probe, self.adapter)
        engines = self.calls.wait(pending, "sync check")
        self.bytes = sum(
            _nbytes(dtype, shape) for dtype, shape, _ in learner["fingerprints"].values()
        )
        stats = [self._check(i, e, learner) for i, e in enumerate(engines)]
        self.diffs = {k: max((s[k] for s in stats), default=0.0) for k in ("mean", "p99", "max")}
        return self.diffs["max"]

    def _check(self, i: int, engine: dict[str, Any], learner: dict[str, Any]) -> dict[str, float]:
        """One engine's weights state against the learner's; -> its probe log-prob differences
        (mean, p99, max)."""
        where = f"weight sync: rollout engine {i} (version {self.version})"
        problem = sync_problem(engine, learner["fingerprints"], self.version)
        if problem:
            raise WeightSyncError(f"{where}: {problem}")
        stats = logprob_diff_stats(engine["logprobs"], learner["logprobs"])
        dtype = self.cfg.model.dtype
        problem = logprob_problem(stats, sync_logprob_limits(self.cfg), dtype)
        if problem:
            raise WeightSyncError(f"{where} {problem}")
        return stats

    def state_dict(self) -> dict[str, Any]:
        return {"version": self.version, "probe": self.probe}


def _nbytes(dtype: str, shape: list[int]) -> int:
    """Bytes of a tensor of this dtype (torch's name) and shape."""
    import torch

    return getattr(torch, dtype).itemsize * math.prod(shape)
