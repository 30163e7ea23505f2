"""`instructray submit`'s local half: the entrypoint it builds, what it refuses, the address."""

from __future__ import annotations

from pathlib import Path

import pytest

from instructray.orchestrator import jobs
from instructray.orchestrator.cli import main

CONFIG = str(Path(__file__).parents[2] / "deploy/configs/ppo-tiny-cpu.yaml")


def test_entrypoint_is_the_stage_command_quoted_for_a_shell():
    cmd = jobs.entrypoint("ppo", "deploy/configs/ppo-tiny-cpu.yaml", ["--run.name=a b"])
    assert cmd == "instructray ppo --config deploy/configs/ppo-tiny-cpu.yaml '--run.name=a b'"


@pytest.mark.parametrize("arg", ["--wandb.api_key=x", "--hub_token=y", "--db.password=z"])
def test_secrets_never_go_on_the_command_line(arg):
    with pytest.raises(jobs.JobError, match="refusing to put"):
        jobs.check_no_secrets(["--run.steps=2", arg])


def test_address_comes_from_the_flag_then_ray_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert jobs.address_of(None) == jobs.DEFAULT_ADDRESS
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    assert jobs.address_of(None) == "http://head:8265"
    assert jobs.address_of("http://other:8265") == "http://other:8265"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # a GCS address is not the job API
    assert jobs.address_of(None) == jobs.DEFAULT_ADDRESS


def test_submit_checks_the_config_before_reaching_the_cluster(capsys):
    code = main(["submit", "ppo", "--config", "deploy/configs/ppo-tiny-cpu.yaml", "--run.stepz=2"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("instructray submit: error:") and "run.steps" in err


def test_submit_to_a_cluster_that_is_not_there_is_one_line(capsys):
    code = main(["submit", "ppo", "--config", CONFIG, "--address", "http://127.0.0.1:9"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "cannot reach the Ray job API at http://127.0.0.1:9" in err and "\n" not in err


def test_the_runtime_env_is_found_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the repository root
    env = jobs.load_runtime_env(jobs.RUNTIME_ENV)
    root = Path(__file__).resolve().parents[2]
    assert Path(env["working_dir"]) == root  # the repository that ships it, not the cwd
    assert ".venv/" in env["excludes"]
    with pytest.raises(jobs.JobError, match="nope.yaml does not exist"):
        jobs.load_runtime_env(Path("nope.yaml"))
