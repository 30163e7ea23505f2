"""Per-role actor options of a placement slot (no Ray started: options are plain data)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from instructray.orchestrator import cluster
from instructray.orchestrator.cluster import Placement, PlacementError, Slot, never_fits
from instructray.orchestrator.config import load_config

CONFIG = Path(__file__).parents[2] / "deploy" / "configs" / "ppo-tiny-cpu.yaml"


def _env(role: str, gpu: float = 0.0) -> dict[str, str]:
    slot = Slot(None, 0, {"CPU": 1.0, "GPU": gpu}, {"RUN": "x"}, role=role)
    return slot.options()["runtime_env"]["env_vars"]


def test_cpu_roles_sleep_at_once_but_the_engine_spins_briefly():
    for role in ("learner", "reference", "reward"):
        env = _env(role)
        assert env["OMP_WAIT_POLICY"] == "PASSIVE" and "GOMP_SPINCOUNT" not in env, role
        assert env["RUN"] == "x"
    engine = _env("rollout")
    assert engine["GOMP_SPINCOUNT"] == "10000" and "OMP_WAIT_POLICY" not in engine


def test_gpu_actors_keep_openmp_defaults():
    env = _env("rollout", gpu=1.0)
    assert "GOMP_SPINCOUNT" not in env and "OMP_WAIT_POLICY" not in env


def test_never_fits_names_the_role_and_what_the_cluster_has():
    two_nodes = [{"CPU": 4.0, "GPU": 1.0}, {"CPU": 4.0}]
    assert never_fits({"learner": [{"CPU": 2.0, "GPU": 1.0}]}, two_nodes) == ""
    # An actor larger than every node.
    why = never_fits({"learner": [{"CPU": 1.0}], "rollout": [{"CPU": 1.0, "GPU": 2.0}]}, two_nodes)
    assert why.startswith("one rollout actor needs {'CPU': 1.0, 'GPU': 2.0}, more than any node")
    # Each fits somewhere, but not all of them together.
    why = never_fits({"learner": [{"GPU": 1.0}] * 2, "reward": [{"CPU": 1.0}]}, two_nodes)
    assert why == (
        "they need {'CPU': 1.0, 'GPU': 2.0} in all (learner 2 x {'GPU': 1.0}; reward 1 x "
        "{'CPU': 1.0}), the cluster has {'CPU': 8.0, 'GPU': 1.0}"
    )


def test_a_run_the_cluster_can_never_fit_fails_at_once(ray_local):
    from ray.util import placement_group_table

    cfg = load_config(CONFIG, ["--rollout.cpus_per_engine=100", "--run.timeout_s=600"])
    before = len(placement_group_table())
    start = time.monotonic()
    with pytest.raises(PlacementError, match=r"one rollout actor needs \{'CPU': 100.0\}"):
        Placement(cfg)
    assert time.monotonic() - start < 60  # not run.timeout_s
    states = [g["state"] for g in placement_group_table().values()][before:]
    assert states and all(s == "REMOVED" for s in states)  # nothing left reserved


def test_a_placement_that_waits_says_for_what(ray_local, monkeypatch, caplog):
    from ray.util.placement_group import placement_group, remove_placement_group

    monkeypatch.setattr(cluster, "WAIT_REPORT_S", 0.5)
    hog = placement_group([{"CPU": ray_local.cluster_resources()["CPU"]}])  # every CPU, held
    ray_local.get(hog.ready(), timeout=60)
    try:
        cfg = load_config(CONFIG, ["--run.timeout_s=2"])
        with caplog.at_level(logging.WARNING, logger="instructray.orchestrator.cluster"):
            with pytest.raises(PlacementError, match=r"could not reserve the resources within 2 s"):
                Placement(cfg)
        waits = [r.getMessage() for r in caplog.records if "waiting for resources" in r.message]
        assert waits and "'learner': \"2 x {'CPU': 1.0}\"" in waits[0], waits
        assert "available: {'CPU': 0.0}" in waits[0], waits
    finally:
        remove_placement_group(hog)


def test_every_actor_gets_the_runs_log_level():
    from instructray.actors.logs import LEVEL_ENV

    assert cluster.actor_env(load_config(CONFIG, []))[LEVEL_ENV] == "warning"
    assert cluster.actor_env(load_config(CONFIG, ["--run.log_level=debug"]))[LEVEL_ENV] == "debug"
