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


@pytest.mark.parametrize(
    "arg", ["--wandb.api_key=x", "--hub_token=y", "--db.password=z", "--x.token=t", "--secret"]
)
def test_secrets_never_go_on_the_command_line(arg):
    with pytest.raises(jobs.JobError, match="refusing to put"):
        jobs.check_no_secrets(["--run.steps=2", arg])


def test_keys_that_only_mention_tokens_pass():
    jobs.check_no_secrets(
        [
            "--rollout.max_new_tokens=64",
            "--data.max_prompt_tokens=32",
            "--sft.max_tokens_per_batch=512",
            "--reward.url_token_env=MY_TOKEN",  # the name of a variable, not its value
        ]
    )


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


def test_submit_to_a_cluster_that_is_not_there_is_one_line(capsys, tiny_dir, tmp_path):
    here = [f"--model.tiny_dir={tiny_dir}", f"--run.output_dir={tmp_path}"]  # the pre-flight's
    code = main(["submit", "ppo", "--config", CONFIG, "--address", "http://127.0.0.1:9", *here])
    assert code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the pre-flight's log lines
    assert last.startswith("instructray submit: error: cannot reach the Ray job API at "), last
    assert "http://127.0.0.1:9" in last


def test_submit_runs_the_preflight_before_reaching_the_cluster(tiny_dir, tmp_path):
    from instructray.orchestrator.data import DataError

    nowhere = "http://127.0.0.1:9"  # nothing listens: reaching it would be "cannot reach"
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "Tell me."}\n{"prompt": 42}\n')
    here = [f"--model.tiny_dir={tiny_dir}", f"--run.output_dir={tmp_path / 'run'}"]
    with pytest.raises(DataError) as e:  # the pre-flight's own error, as `instructray ppo` has it
        jobs.submit("ppo", CONFIG, [*here, f"--data.prompts={bad}"], nowhere)
    assert str(bad) in str(e.value) and "line 2" in str(e.value) and "\n" not in str(e.value)
    # A model folder not on this machine (it may be on the cluster): the line names the flag.
    with pytest.raises(jobs.JobError) as e:
        jobs.submit("ppo", CONFIG, [*here, "--model.policy=/cluster/sft"], nowhere)
    assert str(e.value) == (
        "model.policy: /cluster/sft does not exist (/cluster/sft is not on this machine: if it "
        "is on the cluster, submit with --no-preflight)"
    )
    with pytest.raises(jobs.JobError, match="cannot reach the Ray job API"):  # skipped: sent
        jobs.submit("ppo", CONFIG, [*here, "--model.policy=/cluster/sft"], nowhere, preflight=False)


def test_the_runtime_env_is_found_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the repository root
    env = jobs.load_runtime_env(jobs.RUNTIME_ENV)
    root = Path(__file__).resolve().parents[2]
    assert Path(env["working_dir"]) == root  # the repository that ships it, not the cwd
    assert ".venv/" in env["excludes"]
    with pytest.raises(jobs.JobError, match="nope.yaml does not exist"):
        jobs.load_runtime_env(Path("nope.yaml"))
