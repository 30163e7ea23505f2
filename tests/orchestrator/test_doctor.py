"""`instructray doctor` on a machine with no GPU: the CPU step runs for real (Ray, vLLM, DeepSpeed,
one PPO step), every GPU check is skipped saying what it needs, and a failed check fails it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import instructray.orchestrator.doctor as doctor
from instructray.orchestrator.config import load_config, validate_config
from instructray.orchestrator.config.precision import resolve_precision
from instructray.orchestrator.doctor import (
    CHECKS,
    Check,
    DoctorFailed,
    report,
    run_checks,
    run_doctor,
)

DOCTOR = Path(__file__).parents[2] / "deploy/configs/doctor-tiny.yaml"


def doctor_config(tiny_dir, out: Path):
    cfg = load_config(DOCTOR, [f"--model.tiny_dir={tiny_dir}", f"--run.output_dir={out}"])
    return resolve_precision(validate_config(cfg, "doctor"))


def test_on_cpu_the_cpu_step_passes_and_each_gpu_check_says_what_it_needs(
    ray_local, tiny_dir, tmp_path, capsys
):
    run_doctor(doctor_config(tiny_dir, tmp_path))  # raises if a check failed
    results = json.loads((tmp_path / "doctor.json").read_text())
    assert [r["name"] for r in results] == [c.name for c in CHECKS]
    cpu, *gpu = results
    assert cpu["status"] == "passed" and cpu["seconds"] > 0, cpu
    for role in ("rollout cpu", "learner cpu", "reference cpu", "reward cpu"):
        assert role in cpu["detail"]
    assert "1 step(s), weight version 1 verified" in cpu["detail"]
    assert (tmp_path / "cpu-step/doctor-base.yaml").is_file()  # each check in a folder of its own
    [row] = [json.loads(x) for x in (tmp_path / "cpu-step/metrics.jsonl").read_text().splitlines()]
    assert row["step"] == 0 and row["timing/generate"] > 0 and row["weight_sync/version"] == 1
    needs = {"gpu-step": 1, "nccl-sync": 4, "tp2": 5, "sync-4gib": 1}
    assert {r["name"]: r["status"] for r in gpu} == dict.fromkeys(needs, "skipped")
    for r in gpu:
        assert r["detail"] == f"needs {needs[r['name']]} GPU(s), the Ray cluster has 0"
    printed = [  # the table, among the actors' log lines Ray forwards
        line
        for line in capsys.readouterr().out.splitlines()
        if line.split(" ", 1)[0] in ("passed", "failed", "skipped")
    ]
    assert len(printed) == len(CHECKS)
    assert printed[0].startswith("passed   cpu-step ")
    assert printed[1] == "skipped  gpu-step             needs 1 GPU(s), the Ray cluster has 0"


def test_a_failed_check_is_reported_and_fails_the_doctor(
    ray_local, tiny_dir, tmp_path, monkeypatch
):
    def broken(cfg, folder):
        raise RuntimeError("engine 0 on\n cpu, not cuda")

    def fine(cfg, folder):
        return "ok"

    checks = [Check("broken", 0, "fails", broken), Check("fine", 0, "passes", fine)]
    results = run_checks(doctor_config(tiny_dir, tmp_path), checks)
    assert [(r.name, r.status) for r in results] == [("broken", "failed"), ("fine", "passed")]
    assert results[0].detail == "RuntimeError: engine 0 on cpu, not cuda"  # one line
    assert report(results).splitlines()[0].startswith("failed   broken ")
    monkeypatch.setattr(doctor, "CHECKS", checks)
    with pytest.raises(DoctorFailed, match=r"1 check\(s\) failed: broken"):
        run_doctor(doctor_config(tiny_dir, tmp_path / "again"))
