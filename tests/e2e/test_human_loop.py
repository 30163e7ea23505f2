"""InstructGPT's loop with people in it: a pipeline of two rounds whose labeler is `human`. Round 2
publishes the current policy's samples to the labeling service and waits; the driver is killed
while it waits; resumed, it waits on for the same tasks, now served by Ray Serve, while bots (two
per task, each ranking with a tie) rank them through the HTTP API; the reward model of round 2
trains on their rankings, its tied pairs dropped and counted, and the round's agreement is
reported."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from instructray.orchestrator.labeling.store import Store

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 900  # SFT, RM and PPO of round 1 on two cores, then round 2's samples
BOT = "rewards_for_tests:rank_with_a_tie"
PROMPTS = 6


def pipeline(tiny_dir, run, *extra):
    return [
        sys.executable,
        "-m",
        "instructray.orchestrator.cli",
        "pipeline",
        "--config=deploy/configs/pipeline-tiny-cpu.yaml",
        f"--model.tiny_dir={tiny_dir}",
        f"--run.output_dir={run}",
        "--run.steps=2",
        "--sft.epochs=1",
        "--rm.epochs=1",
        "--pipeline.iterations=2",
        "--pipeline.labeler=human",
        f"--pipeline.rank_prompts={PROMPTS}",
        "--pipeline.samples_per_prompt=4",
        "--labeling.overlap=2",
        "--labeling.port=0",
        *extra,
    ]


def env():
    paths = [str(ROOT / "tests" / "support"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def test_a_human_round_survives_a_killed_driver_and_trains_on_the_bots_rankings(tiny_dir, tmp_path):
    run, log = tmp_path / "run", tmp_path / "first.log"
    marker = run / "labeling-2" / "tasks.json"
    with log.open("w") as out:  # its own session: the kill takes its Ray along
        first = subprocess.Popen(
            pipeline(tiny_dir, run),
            cwd=ROOT,
            env=env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + WAIT_S
        while not marker.exists():  # round 2's tasks are published: it waits for people now
            assert first.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"no {marker} after {WAIT_S} s"
            time.sleep(0.5)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    tasks = json.loads(marker.read_text())["task_ids"]  # prompts with 2+ distinct samples
    assert 2 <= len(tasks) <= PROMPTS and not (run / "rm-2").exists()

    resumed = subprocess.run(
        pipeline(
            tiny_dir,
            run,
            "--run.resume=auto",
            "--labeling.bots=2",
            f"--labeling.bot={BOT}",
            "--labeling.serve=ray",  # resumed on the cluster: the bots rank through Ray Serve
        ),
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    assert json.loads(marker.read_text())["task_ids"] == tasks  # waited on, not published again
    assert "(Ray Serve app 'labeling')" in resumed.stdout
    store = Store(f"sqlite:///{run / 'labeling.db'}")
    status = store.status("round-2")
    store.close()
    assert status["tasks"] == len(tasks) and status["rankings"] == 2 * len(tasks)
    labeling = [
        json.loads(x) for x in (run / "labeling-2" / "metrics.jsonl").read_text().splitlines()
    ]
    assert labeling[-1]["labeling/rankings"] == 2 * len(tasks)
    assert labeling[-1]["labeling/agreement"] == 1.0  # two bots of one rule agree
    rows = [json.loads(x) for x in (run / "rankings-2.jsonl").read_text().splitlines()]
    human = [r for r in rows if r.get("batch") == "round-2"]
    assert len(human) == len(tasks) and all(r["rankings"] == 2 for r in human)  # one per prompt
    assert all(r["provenance"]["round"] == 2 for r in human)
    rm2 = [json.loads(x) for x in (run / "rm-2" / "metrics.jsonl").read_text().splitlines()]
    assert all(isinstance(r["ranking"][-1], list) for r in human)  # the bots' tie, kept
    assert sum(r.get("train/tied_pairs", 0) for r in rm2) > 0  # dropped from the loss, counted
    assert (run / "final").exists()
