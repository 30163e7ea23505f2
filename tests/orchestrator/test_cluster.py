"""Per-role actor options of a placement slot (no Ray started: options are plain data)."""

from __future__ import annotations

from orchestrator.cluster import Slot


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
