"""Joining or starting Ray, and placement groups per role (or one shared, with `run.colocate`)."""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from instructray.actors.faults import ENV as FAULT_ENV
from instructray.actors.logs import ACTOR_NAME_ENV
from instructray.actors.logs import LEVEL_ENV as LOG_LEVEL_ENV
from instructray.actors.rollout import BUNDLES_ENV
from instructray.orchestrator.config import Config, uses_reward_model
from instructray.orchestrator.config.checks import max_engines
from instructray.orchestrator.config.lora import reference_in_learner
from instructray.orchestrator.console import filter_forwarded_lines, quiet_bars, token_hint
from instructray.orchestrator.output import RUN_ENV, run_label

logger = logging.getLogger(__name__)


# Ray's single-machine switch (meant for laptops): "0" makes every Ray process of a local Ray
# bind 127.0.0.1. Without it GCS, raylets, workers and agents listen on all interfaces even when
# the node address is 127.0.0.1 (measured with Ray 2.60).
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def loopback_only() -> None:
    """Make the next local Ray this process starts serve this machine only."""
    from ray._private import ray_constants

    os.environ[LOCAL_ONLY_ENV] = "0"  # for Ray's own child processes, read as they import
    ray_constants.ENABLE_RAY_CLUSTER = False  # for this process, which read it at import


def connect(cfg: Config) -> str:
    """Join `run.ray_address` / RAY_ADDRESS, or start a local Ray on loopback. Returns a label
    that names the dashboard's address."""
    if ray.is_initialized():
        return f"the Ray already initialized in this process; {_dashboard(None)}"
    address = cfg.run.ray_address or os.environ.get("RAY_ADDRESS", "")
    if address:
        context = ray.init(address=address, log_to_driver=True)
        _quiet_console(cfg)
        return f"{address}; {_dashboard(context)}"
    # address="local" never joins a stale cluster recorded by an earlier `ray start`. Logical CPUs
    # cover every actor even on a 2-core laptop: the roles take turns, they rarely compute at once.
    # Room for rollout.max_engines engines (autoscale or `instructray scale` grow into it).
    requests = role_requests(cfg, max(max_engines(cfg), cfg.rollout.max_engines))
    wanted = sum(r.get("CPU", 0.0) for reqs in requests.values() for r in reqs)
    loopback_only()
    context = ray.init(
        address="local",
        num_cpus=max(os.cpu_count() or 1, math.ceil(wanted)),
        dashboard_host="127.0.0.1",
        _node_ip_address="127.0.0.1",
    )
    _quiet_console(cfg)
    return f"a new local Ray; {_dashboard(context)}"


def _quiet_console(cfg: Config) -> None:
    """The actors' lines that mean nothing for a working run stay in their log files
    (orchestrator/console.py), unless run.log_level is debug; progress bars write a few lines
    where the console is a file."""
    if cfg.run.log_level != "debug":
        filter_forwarded_lines()
    quiet_bars()


def _dashboard(context: Any) -> str:
    """'dashboard: http://HOST:PORT' of the Ray this process joined (or says there is none)."""
    if context is not None:
        url = context.dashboard_url
    else:  # joined before: Ray's own record of the node (internal; the label only informs)
        try:
            from ray._private.worker import global_worker

            url = global_worker.node.webui_url if global_worker.node else None
        except Exception:
            url = None
    return f"dashboard: http://{url}{token_hint()}" if url else "dashboard: not running"


def on_gpu(cfg: Config) -> bool:
    return cfg.learner.gpus_per_rank > 0


def engine_request(cfg: Config) -> dict[str, float]:
    """Resources of one rollout engine: the actor's CPUs and its GPUs (with its vLLM workers')."""
    engine = {"CPU": cfg.rollout.cpus_per_engine}
    if on_gpu(cfg):
        engine["GPU"] = float(cfg.rollout.tensor_parallel_size)
    return engine


def tensor_parallel(cfg: Config) -> bool:
    """Whether each engine runs tensor-parallel over several GPUs (its vLLM workers are Ray
    actors of their own, one GPU each)."""
    return on_gpu(cfg) and cfg.rollout.tensor_parallel_size > 1


def engine_bundles(cfg: Config) -> list[dict[str, float]]:
    """The placement bundles of one engine. Tensor-parallel: one bundle of one GPU per worker
    (vLLM's Ray executor refuses a bundle of more than one GPU), the engine actor's CPUs in the
    first; else one bundle, the engine_request."""
    if not tensor_parallel(cfg):
        return [engine_request(cfg)]
    tp = cfg.rollout.tensor_parallel_size
    return [{"CPU": cfg.rollout.cpus_per_engine, "GPU": 1.0}] + [{"GPU": 1.0}] * (tp - 1)


def role_requests(cfg: Config, engines: int | None = None) -> dict[str, list[dict[str, float]]]:
    """Resources of each actor of each role, in start order (`engines` engines, default
    rollout.num_engines). A reward actor takes a GPU only to run a reward model (rule rewards
    are Python on CPUs)."""
    gpu = on_gpu(cfg)
    engine = engine_request(cfg)
    rank = {"CPU": cfg.learner.cpus_per_rank}
    if gpu:
        rank["GPU"] = cfg.learner.gpus_per_rank
    gpu_share = {"GPU": 1.0} if gpu else {}
    reward_gpu = gpu_share if uses_reward_model(cfg) else {}
    requests = {
        "rollout": [engine] * (cfg.rollout.num_engines if engines is None else engines),
        "learner": [rank] * cfg.learner.num_ranks,
        "reference": [{"CPU": cfg.reference.cpus_per_actor, **gpu_share}]
        * (0 if reference_in_learner(cfg) else cfg.reference.num_actors),
        "reward": [{"CPU": cfg.reward.cpus_per_actor, **reward_gpu}] * cfg.reward.num_actors,
    }
    requests = {role: reqs for role, reqs in requests.items() if reqs}  # no reference: LoRA's
    if cfg.run.colocate and gpu:
        # Colocated roles share each bundle's GPU: every role on a GPU takes a fraction of it.
        share = 1.0 / sum(1 for reqs in requests.values() if reqs[0].get("GPU"))
        requests = {
            role: [{**r, "GPU": r["GPU"] * share} if r.get("GPU") else r for r in reqs]
            for role, reqs in requests.items()
        }
    return requests


def colocated_bundles(requests: dict[str, list[dict[str, float]]]) -> list[dict[str, float]]:
    """run.colocate: bundle i holds actor i of every role. A bundle with any GPU actor reserves
    a whole GPU, however few roles fill it: two bundles of a fraction each could share one
    device, and NCCL refuses two learner ranks on one (num_ranks != num_engines)."""
    bundles: list[dict[str, float]] = []
    for reqs in requests.values():
        for i, r in enumerate(reqs):
            _merge(bundles, i, r)
    return [{**b, "GPU": 1.0} if b.get("GPU") else b for b in bundles]


# OpenMP waiting on CPU, per role. Roles share a few cores; idle OpenMP threads that spin steal
# them from the role that computes (measured: 9.6 s instead of 11.8 s per step at 30M on 2
# cores), so threads sleep at once. The rollout engine computes alone (generation is its own
# phase) in thousands of small decode ops: its threads spin briefly between them (~10k spins).
# Measured on 2 cores at 30M: generate 0.47 s instead of 0.58; spinning in the scoring roles,
# which compute at the same time, cost more than it gained (score 2.1-2.6 s instead of 1.7).
CPU_THREAD_ENV = {
    "": {"OMP_WAIT_POLICY": "PASSIVE"},
    "rollout": {"GOMP_SPINCOUNT": "10000"},
}


class PlacementError(RuntimeError):
    """The cluster cannot give the run's actors their resources (now or within the timeout)."""


@dataclass
class Slot:
    """Where one actor goes: a placement group bundle and the resources it asks for."""

    pg: PlacementGroup
    bundle: int
    resources: dict[str, float]
    env: dict[str, str] = field(default_factory=dict)  # the actor's environment variables
    max_restarts: int = 0  # Ray restarts a dead actor (its constructor runs again) this often
    role: str = ""
    # A tensor-parallel engine: the bundles whose GPUs its vLLM workers take, one each. The
    # actor itself then asks for no GPU (a worker could never be scheduled beside it).
    worker_bundles: tuple[int, ...] = ()
    index: int | None = None  # the actor's number in its role; None = its bundle's

    @property
    def name(self) -> str:
        """What the dashboard and the console call the actor: its role and number
        (`rollout-0`, `learner-rank-1`)."""
        number = self.bundle if self.index is None else self.index
        return f"{'learner-rank' if self.role == 'learner' else self.role}-{number}"

    def options(self) -> dict[str, Any]:
        """Keyword arguments for `ActorClass.options(...)`."""
        strategy = PlacementGroupSchedulingStrategy(
            placement_group=self.pg, placement_group_bundle_index=self.bundle
        )
        options: dict[str, Any] = {
            "num_cpus": self.resources.get("CPU", 0),
            "num_gpus": 0 if self.worker_bundles else self.resources.get("GPU", 0),
            "scheduling_strategy": strategy,
            "max_restarts": self.max_restarts,
        }
        env = {**self.env, ACTOR_NAME_ENV: self.name}  # the actor's repr (actors/logs.py)
        if self.worker_bundles:  # read by vLLM's Ray executor in the engine
            env[BUNDLES_ENV] = ",".join(map(str, self.worker_bundles))
        if not self.resources.get("GPU"):
            env.update(CPU_THREAD_ENV.get(self.role, CPU_THREAD_ENV[""]))
        options["runtime_env"] = {"env_vars": env}
        return options


def _merge(bundles: list[dict[str, float]], index: int, request: dict[str, float]) -> None:
    while len(bundles) <= index:
        bundles.append({})
    for k, v in request.items():
        bundles[index][k] = bundles[index].get(k, 0.0) + v


def _restarts(cfg: Config, role: str) -> int:
    """Rollout, reward and reference actors are restarted in the run; learner ranks are not
    (a rank that dies stops the run; it resumes from its latest checkpoint)."""
    return 0 if role == "learner" else max(cfg.run.max_actor_restarts, 0)


def actor_env(cfg: Config, name: str = "") -> dict[str, str]:
    """Environment variables of every actor and Ray Train worker of a run; `name`, what the
    dashboard and the console call the actor (actors/logs.py Named)."""
    env = {RUN_ENV: run_label(cfg), LOG_LEVEL_ENV: cfg.run.log_level}  # their metrics' label
    if name:
        env[ACTOR_NAME_ENV] = name
    if os.environ.get(FAULT_ENV):  # tests inject faults through it (actors/faults.py)
        env[FAULT_ENV] = os.environ[FAULT_ENV]
    return env


class Placement:
    """Placement groups for all roles; `slots[role][i]` places actor i of that role."""

    def __init__(self, cfg: Config):
        self.groups: list[PlacementGroup] = []
        self.slots: dict[str, list[Slot]] = {}
        requests = role_requests(cfg)
        env = actor_env(cfg)
        # What each placement waits for: its groups, and the bundles that must fit the nodes.
        waits: dict[str, list[PlacementGroup]] = {}
        fits = requests
        if cfg.run.colocate:
            bundles = colocated_bundles(requests)
            pg = placement_group(bundles, strategy="PACK", name="instructray-colocated")
            self.groups.append(pg)
            self.slots = {
                role: [Slot(pg, i, r, env, _restarts(cfg, role), role) for i, r in enumerate(reqs)]
                for role, reqs in requests.items()
            }
            waits = {"every role (run.colocate)": [pg]}
            fits = {"colocated": bundles}
        else:
            for role, reqs in requests.items():
                if role == "rollout" and tensor_parallel(cfg):
                    self.slots[role] = [self._engine_group(cfg, i) for i in range(len(reqs))]
                    waits[role] = [s.pg for s in self.slots[role]]
                    continue
                strategy = {
                    "rollout": cfg.rollout.placement_strategy,
                    "reward": cfg.reward.placement_strategy,
                }.get(role, "PACK")
                pg = placement_group(list(reqs), strategy=strategy, name=f"instructray-{role}")
                self.groups.append(pg)
                self.slots[role] = [
                    Slot(pg, i, r, env, _restarts(cfg, role), role) for i, r in enumerate(reqs)
                ]
                waits[role] = [pg]
        self._wait(waits, fits, requests, cfg.run.timeout_s)

    def _engine_group(self, cfg: Config, engine_id: int) -> Slot:
        """A placement group of one engine's own. Tensor-parallel, its GPUs on one node
        (STRICT_PACK): the workers all-reduce at every layer."""
        bundles = engine_bundles(cfg)
        strategy = "STRICT_PACK" if len(bundles) > 1 else "PACK"
        pg = placement_group(bundles, strategy=strategy, name=f"instructray-rollout-{engine_id}")
        self.groups.append(pg)
        workers = tuple(range(len(bundles))) if tensor_parallel(cfg) else ()
        restarts = _restarts(cfg, "rollout")
        request = engine_request(cfg)
        return Slot(pg, 0, request, actor_env(cfg), restarts, "rollout", workers, engine_id)

    def _wait(
        self,
        waits: dict[str, list[PlacementGroup]],
        fits: dict[str, list[dict[str, float]]],
        requests: dict[str, list[dict[str, float]]],
        timeout_s: float,
    ) -> None:
        """Wait for every group within timeout_s, saying every WAIT_REPORT_S what is pending;
        fail at once where the cluster can never fit the bundles (and no autoscaler may grow
        it)."""
        problem = never_fits(fits, _node_totals())
        if problem and not may_grow():
            self.remove()
            raise PlacementError(
                f"placement: the cluster can never fit this run's actors: {problem}"
            )
        pending = {label: [pg.ready() for pg in groups] for label, groups in waits.items()}
        deadline = time.monotonic() + timeout_s
        while pending:
            refs = [ref for refs in pending.values() for ref in refs]
            ready, _ = ray.wait(
                refs,
                num_returns=len(refs),
                timeout=max(0.0, min(WAIT_REPORT_S, deadline - time.monotonic())),
            )
            pending = {
                label: [r for r in refs if r not in ready] for label, refs in pending.items()
            }
            pending = {label: refs for label, refs in pending.items() if refs}
            if not pending:
                return
            wanted = {label: describe(requests.get(label, [])) for label in pending}
            left = deadline - time.monotonic()
            if left <= 0:
                self.remove()
                raise PlacementError(
                    f"placement: the cluster could not reserve the resources within "
                    f"{timeout_s:.0f} s (pending: {wanted}; available: {_free()})"
                )
            logger.warning(
                "placement: waiting for resources (%.0f s left of run.timeout_s) for %s; "
                "available: %s%s",
                left,
                wanted,
                _free(),
                f"; {problem}, waiting for the autoscaler" if problem else "",
            )

    def add_engine_group(self, cfg: Config, engine_id: int) -> Slot:
        """A placement group of its own for a rollout engine that joins the run (a group
        cannot gain bundles); not waited for (its `pg.ready()` says when it is placed)."""
        return self._engine_group(cfg, engine_id)

    def release(self, slot: Slot) -> None:
        """An engine left the pool: remove its group once no other actor of the run is in it
        (an engine started with the run shares its role's group, and its bundle stays reserved;
        a tensor-parallel engine has a group of its own, which goes with it)."""
        used = any(s.pg.id == slot.pg.id for slots in self.slots.values() for s in slots)
        if not used and any(pg.id == slot.pg.id for pg in self.groups):
            remove_placement_group(slot.pg)
            self.groups = [pg for pg in self.groups if pg.id != slot.pg.id]

    def nodes(self) -> dict[str, list[str]]:
        """The node id each actor of each role was placed on: {role: [node id per actor]}."""
        from ray.util import placement_group_table

        out: dict[str, list[str]] = {}
        for role, slots in self.slots.items():
            out[role] = [placement_group_table(s.pg)["bundles_to_node_id"][s.bundle] for s in slots]
        return out

    def remove(self) -> None:
        for pg in self.groups:
            remove_placement_group(pg)
        self.groups = []


WAIT_REPORT_S = 30.0  # how often a placement that waits says what it waits for


def _rounded(resources: dict[str, float]) -> dict[str, float]:
    """Resources as a user reads them: no per-node or per-group bookkeeping keys."""
    hidden = ("node:", "accelerator_type:", "bundle_group_", "memory", "object_store_memory")
    return {
        k: round(v, 3)
        for k, v in sorted(resources.items())
        if not k.startswith(hidden) and "_group_" not in k
    }


def describe(reqs: list[dict[str, float]]) -> str:
    """A role's actors as `2 x {CPU: 1}`."""
    if not reqs:
        return "none"
    first = reqs[0]
    if all(r == first for r in reqs):
        return f"{len(reqs)} x {_rounded(first)}"
    return " + ".join(str(_rounded(r)) for r in reqs)


def _node_totals() -> list[dict[str, float]]:
    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def never_fits(requests: dict[str, list[dict[str, float]]], nodes: list[dict[str, float]]) -> str:
    """Why these actors can never be placed on nodes of these total resources, or "": an actor
    larger than every node, or more of a resource in all than the nodes hold together."""
    total: dict[str, float] = {}
    for node in nodes:
        for k, v in node.items():
            total[k] = total.get(k, 0.0) + v
    needed: dict[str, float] = {}
    for role, reqs in requests.items():
        for r in reqs:
            for k, v in r.items():
                needed[k] = needed.get(k, 0.0) + v
            if r and not any(all(node.get(k, 0.0) >= v for k, v in r.items()) for node in nodes):
                return (
                    f"one {role} actor needs {_rounded(r)}, more than any node has "
                    f"(nodes: {[_rounded(n) for n in nodes]})"
                )
    short = {k: v for k, v in needed.items() if v > total.get(k, 0.0) + 1e-9}
    if not short:
        return ""
    per_role = "; ".join(f"{role} {describe(reqs)}" for role, reqs in requests.items() if reqs)
    return (
        f"they need {_rounded(needed)} in all ({per_role}), the cluster has "
        f"{_rounded({k: total.get(k, 0.0) for k in needed})}"
    )


def _free() -> dict[str, float]:
    """What the cluster has free now, of each resource it has (0 where all is taken)."""
    free = ray.available_resources()
    return _rounded({k: free.get(k, 0.0) for k in ray.cluster_resources()})


def may_grow() -> bool:
    """Whether nodes may join for a placement that waits: an autoscaler serves the cluster
    (Ray's autoscaler writes its status into the GCS, which `ray status` reads). A local Ray
    this process started has none that can add nodes, though its monitor runs."""
    from ray._private import worker
    from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS
    from ray.experimental.internal_kv import _internal_kv_get

    node = getattr(worker, "_global_node", None)
    if node is not None and getattr(node, "head", False):  # started here, not joined
        return False
    try:
        return bool(_internal_kv_get(DEBUG_AUTOSCALING_STATUS))
    except Exception:  # an older or newer Ray without it: assume the cluster may grow
        return True
