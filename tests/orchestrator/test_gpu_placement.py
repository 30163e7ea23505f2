"""GPU placement on a Ray that is told it has GPUs (no GPU needed): Ray schedules the GPUs it
is told exist, so small probe actors started with the run's own Slot.options() read the GPU ids
Ray gives each actor (`ray.get_gpu_ids()`).

The probes run in a child process with a Ray of its own (12 GPUs, loopback only): a process joins
one Ray, and the session's (tests/conftest.py, `ray_local`) has no GPUs. That Ray starts once
for the module; the child stops exactly what it started. Run alone, this file is the child:

    python tests/orchestrator/test_gpu_placement.py     # prints FACTS {json}
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from instructray.actors.rollout import BUNDLES_ENV
from instructray.orchestrator.config import ConfigError, load_config, validate_config

CONFIG = Path(__file__).parents[2] / "deploy" / "configs" / "ppo-tiny-cpu.yaml"
GPUS = 12  # the "tp" scenario holds 9 at once
RULE_REWARD = "--reward.function=instructray.orchestrator.demo.world:exact_match"
GPU_RUN = ["--learner.gpus_per_rank=1", "--run.timeout_s=60"]
SCENARIOS = {
    # Two engines of 2 GPUs each, one learner rank, a reference and a reward model: 7 GPUs.
    "tp": [
        *GPU_RUN,
        "--rollout.tensor_parallel_size=2",
        "--rollout.num_engines=2",
        "--learner.num_ranks=1",
    ],
    # Colocated, four learner ranks but one engine: bundles 1-3 hold a rank alone.
    "colocated": [*GPU_RUN, "--run.colocate=true", "--learner.num_ranks=4"],
    # Rule rewards only: the reward actor runs Python, on CPUs.
    "rules": [*GPU_RUN, RULE_REWARD, "--learner.num_ranks=1"],
    "rules_colocated": [*GPU_RUN, RULE_REWARD, "--learner.num_ranks=1", "--run.colocate=true"],
}


# ---------------------------------------------------------------- the child: probes on a GPU Ray


def _probe_class():
    import ray

    @ray.remote
    class Probe:
        """Stands where an actor of the run would: says what Ray gave it."""

        def facts(self) -> dict:
            from ray.util import get_current_placement_group

            pg = get_current_placement_group()
            return {
                "gpus": sorted(str(g) for g in ray.get_gpu_ids()),
                "bundles_env": os.environ.get(BUNDLES_ENV),
                "pg": pg.id.hex() if pg else None,
                "pg_bundles": pg.bundle_specs if pg else [],
            }

        def start_workers(self) -> list[list[str]]:
            """What vLLM's Ray executor does in a tensor-parallel engine (vllm/v1/executor/
            ray_executor_v2.py): one worker of num_cpus=0, num_gpus=1 in each bundle that
            VLLM_RAY_BUNDLE_INDICES names, of the engine's own placement group. -> each
            worker's GPU ids."""
            from ray.util import get_current_placement_group
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            pg = get_current_placement_group()
            workers = [
                Probe.options(
                    num_cpus=0,
                    num_gpus=1,
                    scheduling_strategy=PlacementGroupSchedulingStrategy(
                        placement_group=pg, placement_group_bundle_index=int(i)
                    ),
                ).remote()
                for i in os.environ[BUNDLES_ENV].split(",")
            ]
            facts = ray.get([w.facts.remote() for w in workers], timeout=60)
            for w in workers:
                ray.kill(w)
            return [f["gpus"] for f in facts]

    return Probe


def _probe_slots(probe, slots) -> list[dict]:
    """A probe per slot, started with the slot's options; -> its facts plus the options."""
    import ray

    actors = [probe.options(**s.options()).remote() for s in slots]
    facts = ray.get([a.facts.remote() for a in actors], timeout=120)
    for s, f, a in zip(slots, facts, actors, strict=True):
        f["num_gpus"] = s.options()["num_gpus"]
        if s.worker_bundles:
            f["workers"] = ray.get(a.start_workers.remote(), timeout=120)
        ray.kill(a)
    return facts


def _scenario(probe, overrides: list[str]) -> dict:
    import ray

    from instructray.orchestrator.cluster import Placement

    cfg = load_config(CONFIG, overrides)
    placement = Placement(cfg)
    try:
        seen = {role: _probe_slots(probe, slots) for role, slots in placement.slots.items()}
        if cfg.rollout.tensor_parallel_size > 1:  # an engine that joins later
            joined = placement.add_engine_group(cfg, len(placement.slots["rollout"]))
            ray.get(joined.pg.ready(), timeout=60)
            seen["joined"] = _probe_slots(probe, [joined])
        return seen
    finally:
        placement.remove()


def _sampler(probe) -> dict:
    import ray

    from instructray.orchestrator.sampler import engine_options

    out = {}
    for name, overrides in {
        "gpu_tp2": [*GPU_RUN, "--rollout.tensor_parallel_size=2"],
        "cpu": [],
    }.items():
        options = engine_options(load_config(CONFIG, overrides))
        actor = probe.options(**options).remote()
        out[name] = {**ray.get(actor.facts.remote(), timeout=120), "num_gpus": options["num_gpus"]}
        ray.kill(actor)
    return out


def probe_cluster() -> dict:
    """Every scenario on one Ray of GPUS GPUs; -> what the probes saw, by scenario and role."""
    import ray

    from instructray.orchestrator.cluster import loopback_only

    temp = tempfile.mkdtemp(prefix="irgp-", dir="/tmp")  # short: Ray's socket paths
    loopback_only()
    ray.init(
        address="local",
        num_cpus=16,
        num_gpus=GPUS,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        _temp_dir=temp,
        object_store_memory=100 * 2**20,
    )
    try:
        probe = _probe_class()
        seen = {name: _scenario(probe, overrides) for name, overrides in SCENARIOS.items()}
        seen["sampler"] = _sampler(probe)
        return seen
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


# ---------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def seen() -> dict:
    """What the probes saw (one child process, one Ray start, for the whole module)."""
    from testdata import run_child  # here: the child runs this file without tests/support

    stdout, _ = run_child([__file__], 300, "the GPU probes")
    [line] = [x for x in stdout.splitlines() if x.startswith("FACTS ")]
    return json.loads(line.removeprefix("FACTS "))


def test_tensor_parallel_engines_get_one_gpu_per_bundle_and_their_own_gpus(seen):
    engines = seen["tp"]["rollout"] + seen["tp"]["joined"]  # two at the start, one joins
    assert len(engines) == 3
    for engine in engines:
        # vLLM's Ray executor refuses a bundle of more than one GPU and needs tp of them.
        assert [b.get("GPU", 0) for b in engine["pg_bundles"]] == [1.0, 1.0]
        # The engine actor holds no GPU: its workers take them, one per bundle it names.
        assert engine["num_gpus"] == 0 and engine["gpus"] == []
        assert engine["bundles_env"] == "0,1"
        assert [len(w) for w in engine["workers"]] == [1, 1]
    gpus = [{g for w in e["workers"] for g in w} for e in engines]
    assert all(len(g) == 2 for g in gpus)  # each worker a GPU of its own
    assert not (gpus[0] & gpus[1] or gpus[0] & gpus[2] or gpus[1] & gpus[2])  # disjoint
    assert len({e["pg"] for e in engines}) == 3  # a group per engine


def test_other_roles_keep_one_gpu_each_beside_tensor_parallel_engines(seen):
    tp = seen["tp"]
    engine_gpus = {g for e in tp["rollout"] for w in e["workers"] for g in w}
    others = [a for role in ("learner", "reference", "reward") for a in tp[role]]
    assert [len(a["gpus"]) for a in others] == [1, 1, 1]
    assert len({a["gpus"][0] for a in others} | engine_gpus) == 7  # no GPU shared


def test_colocated_learner_ranks_get_distinct_gpus(seen):
    col = seen["colocated"]
    ranks = [r["gpus"] for r in col["learner"]]
    assert all(len(g) == 1 for g in ranks)
    assert len({g[0] for g in ranks}) == 4  # NCCL refuses two ranks of a group on one GPU
    # Bundle 0 holds one actor of every role, on one GPU; every bundle reserves a whole GPU.
    firsts = [col[role][0]["gpus"] for role in ("rollout", "learner", "reference", "reward")]
    assert all(g == ranks[0] for g in firsts)
    assert [b["GPU"] for b in col["learner"][0]["pg_bundles"]] == [1.0] * 4
    assert col["learner"][1]["num_gpus"] == pytest.approx(0.25)


def test_rule_rewards_take_no_gpu(seen):
    for name in ("rules", "rules_colocated"):
        [reward] = seen[name]["reward"]
        assert reward["num_gpus"] == 0 and reward["gpus"] == [], name
    # Colocated, the three roles that compute on the GPU share it a third each.
    col = seen["rules_colocated"]
    shares = [col[role][0]["num_gpus"] for role in ("rollout", "learner", "reference")]
    assert shares == pytest.approx([1 / 3] * 3)
    assert col["rollout"][0]["gpus"] == col["learner"][0]["gpus"] != []
    # Not colocated: the reward model's actor would have one; the reference has one.
    assert [len(a["gpus"]) for a in seen["rules"]["reference"]] == [1]


def test_the_sampler_engine_asks_for_the_gpus_it_computes_on(seen):
    gpu, cpu = seen["sampler"]["gpu_tp2"], seen["sampler"]["cpu"]
    assert gpu["num_gpus"] == 2 and len(gpu["gpus"]) == 2
    assert cpu["num_gpus"] == 0 and cpu["gpus"] == []


# ---------------------------------------------------------------- the engine's side, the checks


def test_a_placed_tensor_parallel_engine_drives_ray_workers(monkeypatch):
    from instructray.actors.rollout.actor import _ray_workers

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert _ray_workers() == {} and os.environ["CUDA_VISIBLE_DEVICES"] == "3"  # one GPU
    monkeypatch.setenv(BUNDLES_ENV, "0,1")
    assert _ray_workers() == {"distributed_executor_backend": "ray"}
    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # the node's GPUs, for vLLM's workers


def test_enforce_eager_auto_is_eager_on_cpu_and_cuda_graphs_on_gpu():
    from instructray.actors.rollout.actor import _eager

    assert load_config(CONFIG, []).rollout.enforce_eager == "auto"
    assert (_eager("auto", on_gpu=False), _eager("auto", on_gpu=True)) == (True, False)
    assert (_eager(True, on_gpu=True), _eager(False, on_gpu=False)) == (True, False)
    cfg = load_config(CONFIG, ["--rollout.enforce_eager=false"])
    assert cfg.rollout.enforce_eager is False
    with pytest.raises(ConfigError, match="expected bool | 'auto'"):
        load_config(CONFIG, ["--rollout.enforce_eager=sometimes"])


def test_colocated_gpu_runs_build_the_engines_first():
    from instructray.orchestrator.ppo.roles import engines_first

    assert engines_first(load_config(CONFIG, [*GPU_RUN, "--run.colocate=true"]))
    assert not engines_first(load_config(CONFIG, GPU_RUN))  # each role on GPUs of its own
    assert not engines_first(load_config(CONFIG, ["--run.colocate=true"]))  # CPU


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--learner.gpus_per_rank=2"], "learner.gpus_per_rank = 2: a rank computes on one GPU"),
        (
            ["--model.attn_implementation=flash_attention_2"],
            "model.attn_implementation = flash_attention_2 needs GPUs but learner.gpus_per_rank",
        ),
    ],
)
def test_gpu_settings_that_cannot_work_are_refused(overrides, message):
    with pytest.raises(ConfigError) as e:
        validate_config(load_config(CONFIG, overrides), "ppo")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_flash_attention_is_checked_where_the_driver_is_a_gpu_node(monkeypatch):
    import importlib.util

    import torch

    cfg = load_config(CONFIG, [*GPU_RUN, "--model.attn_implementation=flash_attention_2"])
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "flash_attn" else real(name, *a),
    )
    validate_config(cfg, "ppo")  # a driver without GPUs cannot tell: the actors check at start
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ConfigError, match="needs the flash-attn package, which this GPU node"):
        validate_config(cfg, "ppo")


if __name__ == "__main__":
    print("FACTS " + json.dumps(probe_cluster()), flush=True)
