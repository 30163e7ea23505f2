"""Deployment files load and pass their owners' checks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]


def test_cluster_yaml_passes_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load((ROOT / "cluster.yaml").read_text()))
    validate_config(config)  # raises on a schema error
    head = config["head_start_ray_commands"]
    assert any("--dashboard-host=127.0.0.1" in c and "RAY_AUTH_MODE=token" in c for c in head)


# ---------------------------------------------------------------- shipped configs and GPU math

SHIPPED = sorted((ROOT / "deploy/configs").glob("*.yaml"))


def _gpus(cfg) -> float:
    """GPUs the run reserves: the sum over every actor of every role."""
    from instructray.orchestrator.cluster import role_requests

    return sum(r.get("GPU", 0.0) for reqs in role_requests(cfg).values() for r in reqs)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_config_loads_and_validates_for_its_stage(path):
    from instructray.orchestrator.config import load_config, validate_config

    stage = path.name.split("-")[0]  # ppo-..., pipeline-..., demo-..., bench-...
    stage = {"grpo-tiny-cpu.yaml": "demo"}.get(path.name, "ppo" if stage == "grpo" else stage)
    validate_config(load_config(path), stage)


def test_gpu_configs_reserve_the_gpus_they_promise():
    from instructray.orchestrator.config import load_config

    one = load_config(ROOT / "deploy/configs/ppo-0.5b-1gpu.yaml")
    assert one.run.colocate and _gpus(one) == pytest.approx(1.0)  # 4 roles x a quarter
    grpo = load_config(ROOT / "deploy/configs/grpo-gsm8k-1gpu.yaml")
    assert grpo.run.colocate and _gpus(grpo) == pytest.approx(1.0)
    eight = load_config(ROOT / "deploy/configs/pipeline-7b-8gpu.yaml")
    assert _gpus(eight) == pytest.approx(8.0)
    assert eight.learner.backend == "nccl" and eight.learner.zero_stage == 3
    r, p = eight.rollout, eight.ppo  # the rollout batch splits into whole minibatches per rank
    assert (r.prompts_per_step * r.samples_per_prompt) % (p.minibatch_size * 4) == 0


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--learner.gpus_per_rank=0.5"], "not a whole number of GPUs"),
        (["--rollout.tensor_parallel_size=2"], "needs GPUs but learner.gpus_per_rank = 0"),
        (["--learner.backend=nccl"], "learner.backend = nccl needs GPUs"),
        (["--rollout.gpu_memory_utilization=1.5"], "gpu_memory_utilization must lie in (0, 1]"),
        (
            ["--learner.gpus_per_rank=1", "--run.colocate=true", "--rollout.weight_sync=nccl"],
            "which NCCL refuses",
        ),
        (
            ["--learner.gpus_per_rank=2", "--run.colocate=true"],
            "run.colocate shares one GPU",
        ),
    ],
)
def test_validate_checks_gpu_arithmetic(overrides, message):
    from instructray.orchestrator.config import ConfigError, load_config, validate_config

    cfg = load_config(ROOT / "deploy/configs/ppo-tiny-cpu.yaml", overrides)
    with pytest.raises(ConfigError) as e:
        validate_config(cfg, "ppo")
    assert message in str(e.value)


def test_wandb_project_without_wandb_is_a_config_error(monkeypatch):
    import importlib.util

    from instructray.orchestrator.config import ConfigError, load_config, validate_config

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    cfg = load_config(ROOT / "deploy/configs/ppo-tiny-cpu.yaml", ["--run.wandb_project=p"])
    with pytest.raises(ConfigError, match="wandb is not installed"):
        validate_config(cfg, "ppo")


# ---------------------------------------------------------------- cluster files


def _ray_pin() -> str:
    [pin] = [
        x for x in (ROOT / "constraints-cpu.txt").read_text().splitlines() if x.startswith("ray==")
    ]
    return pin.split("==")[1]


def test_cluster_yaml_enables_token_auth_everywhere():
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    assert "RAY_AUTH_MODE=token" in " ".join(config["docker"]["run_options"])
    assert config["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"
    assert all(
        "RAY_AUTH_MODE=token" in c for c in config["worker_start_ray_commands"] if "ray start" in c
    )
    assert _ray_pin() in config["docker"]["image"]


def test_rayjob_runs_a_shipped_config_on_the_gpus_it_asks_for():
    from instructray.orchestrator.config import load_config, validate_config

    job = yaml.safe_load((ROOT / "deploy/rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec, cluster = job["spec"], job["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == _ray_pin()
    assert cluster["authOptions"]["mode"] == "token"
    words = spec["entrypoint"].split()
    assert words[:2] == ["instructray", "pipeline"]
    config = words[words.index("--config") + 1]
    cfg = load_config(ROOT / config)
    validate_config(cfg, "pipeline")
    gpus = sum(
        int(g["replicas"]) * int(c["resources"]["limits"].get("nvidia.com/gpu", 0))
        for g in cluster["workerGroupSpecs"]
        for c in g["template"]["spec"]["containers"]
    )
    assert gpus == _gpus(cfg) == 8
    yaml.safe_load(spec["runtimeEnvYAML"])  # a valid runtime_env mapping
    for container in [
        c
        for g in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
        for c in g["template"]["spec"]["containers"]
    ]:
        for env in container.get("env", []):
            assert "value" not in env or "KEY" not in env["name"]  # secrets come from Secrets


def test_dockerfile_builds_on_the_pinned_ray_and_the_gpu_extra():
    text = (ROOT / "deploy/Dockerfile").read_text()
    [base] = [x for x in text.splitlines() if x.startswith("FROM ")]
    assert f"rayproject/ray:{_ray_pin()}-" in base and "cu" in base
    assert "'.[gpu]'" in text and "RAY_AUTH_MODE=token" in text
    copied = [x.split()[-2] for x in text.splitlines() if x.startswith("COPY ")]
    for path in copied:
        assert (ROOT / path).exists(), path


def test_runtime_env_uploads_the_code_without_local_state_or_secrets():
    env = yaml.safe_load((ROOT / "deploy/runtime_env.yaml").read_text())
    assert env["working_dir"] == "."
    for local in (".venv/", "runs/", ".git/"):
        assert local in env["excludes"]
    secret = re.compile(r"(^|_)(KEY|TOKEN|SECRET|PASSWORD)(_|$)")
    assert not [k for k in env.get("env_vars", {}) if secret.search(k.upper())]


def test_grafana_dashboard_is_well_formed():
    import json

    board = json.loads((ROOT / "deploy/grafana/instructray.json").read_text())
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)) >= 8
    cells = set()
    for panel in board["panels"]:
        assert panel["title"] and panel["description"] and panel["targets"]
        for target in panel["targets"]:
            assert "ray_instructray_" in target["expr"]
        g = panel["gridPos"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, f"panel {panel['title']} overlaps another"
        cells |= mine


def test_ci_lints_before_it_tests():
    """CI fails on a ruff finding before any test runs, and then runs the README's test command."""
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    lint = next(i for i, line in enumerate(lines) if line.startswith("make lint"))
    test = next(i for i, line in enumerate(lines) if line == "make test")
    assert lint < test and "exit 1" in lines[lint]
    makefile = (ROOT / "Makefile").read_text()
    assert "ruff check ." in makefile and "ruff format --check ." in makefile
