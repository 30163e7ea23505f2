"""Helpers shared by the tests: writing data files, reading run folders."""

from __future__ import annotations

import json
import time
from pathlib import Path


def write_jsonl(path: Path, rows: list[dict]) -> str:
    """Write rows as JSON lines; returns the path as a string (what config fields take)."""
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def metrics_of(folder: Path) -> list[dict]:
    """The rows of a run folder's metrics.jsonl."""
    lines = (Path(folder) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def rows_so_far(folder: Path) -> list[dict]:
    """The rows of a running run's metrics.jsonl so far ([] before the first, or while a line
    is half written)."""
    try:
        return metrics_of(folder)
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def wait_for(what: str, check, deadline: float):
    """check()'s first truthy result before time.monotonic() reaches deadline."""
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")


PPO_TINY = Path(__file__).parents[2] / "deploy/configs/ppo-tiny-cpu.yaml"


def ppo_tiny_config(tiny_dir: str, out: Path, *overrides: str):
    """The tiny PPO config with the session's tiny models, writing into out; validated."""
    from instructray.orchestrator.config import load_config, validate_config

    return validate_config(
        load_config(
            PPO_TINY, [f"--model.tiny_dir={tiny_dir}", f"--run.output_dir={out}", *overrides]
        ),
        "ppo",
    )


def learner_config(policy: str, reward: str, *overrides: str):
    """A config for a LearnerGroup of 2 fp32 ranks on the given models (compared with fp32
    forwards at fp32 tolerances), plus overrides; not validated (tests set odd values)."""
    from instructray.orchestrator.config import load_config

    base = [f"--model.policy={policy}", f"--model.reward={reward}", "--model.dtype=float32"]
    return load_config(None, [*base, "--learner.num_ranks=2", *overrides])


# How close a verified sync's probe log-probs come to the learner's, by the run's dtype: fp32
# rounding only (~1e-6, seen), and bf16's own rounding (0.002-0.015 seen on the tiny models).
SYNCED = {"float32": 1e-4, "bfloat16": 0.03}


def every_sync_close(folder: Path) -> bool:
    """Whether every step of the run in folder logged a probe difference its dtype explains."""
    import yaml

    dtype = yaml.safe_load((Path(folder) / "config.yaml").read_text())["model"]["dtype"]
    rows = metrics_of(folder)
    return bool(rows) and all(r["weight_sync/max_logprob_diff"] < SYNCED[dtype] for r in rows)


def run_child(argv: list[str], timeout_s: float, what: str, env: dict | None = None) -> tuple:
    """Run a Python script that starts a Ray of its own in a child process (its own session, so
    that on a timeout its whole Ray goes with it), without the caller's RAY_ADDRESS; fail the
    test naming `what` on a timeout or a non-zero exit. -> (stdout, stderr)."""
    import os
    import signal
    import subprocess
    import sys

    import pytest

    env = {k: v for k, v in (env or os.environ).items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        [sys.executable, *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"{what} took over {timeout_s:.0f} s:\n{stderr[-3000:]}")
    assert proc.returncode == 0, stderr[-3000:]
    return stdout, stderr
