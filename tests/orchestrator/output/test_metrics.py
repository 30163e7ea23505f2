"""Metric sinks: metrics.jsonl, TensorBoard event files, W&B (offline), Ray gauge names."""

from __future__ import annotations

import json
import struct

import pytest

from instructray.orchestrator.config import load_config
from instructray.orchestrator.output import MetricsLog, metric_name, run_label


def _tensorboard_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Read TFRecord event files: u64 length, u32 crc, Event proto, u32 crc."""
    from tensorboardX.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i : i + 8])
            event = event_pb2.Event.FromString(data[i + 12 : i + 12 + n])
            i += 12 + n + 4
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def test_metric_names_follow_prometheus_rules():
    assert metric_name("reward/mean") == "instructray_reward_mean"
    assert metric_name("timing/generate") == "instructray_timing_generate"
    assert metric_name("data/skipped/too-long") == "instructray_data_skipped_too_long"


def test_run_label_is_the_name_or_the_folder():
    assert run_label(load_config(None, ["--run.output_dir=runs/abc"])) == "abc"
    assert run_label(load_config(None, ["--run.output_dir=x", "--run.name=exp1"])) == "exp1"


def test_one_row_reaches_jsonl_and_tensorboard(tmp_path):
    cfg = load_config(None, [f"--run.output_dir={tmp_path}"])
    log = MetricsLog(cfg, tmp_path, stage="ppo")
    log.log({"step": 0, "reward/mean": 0.5, "kl/mean": float("nan"), "note": "text"})
    log.log({"step": 1, "reward/mean": 0.75, "kl/mean": 0.1})
    log.close()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0] == {"step": 0, "reward/mean": 0.5, "kl/mean": None, "note": "text"}
    scalars = _tensorboard_scalars(tmp_path / "tensorboard")
    assert scalars["reward/mean"] == [(0, 0.5), (1, 0.75)]
    assert scalars["kl/mean"] == [(1, pytest.approx(0.1))]  # NaN and text are not plotted
    assert "note" not in scalars and "step" not in scalars


def test_tensorboard_can_be_switched_off(tmp_path):
    cfg = load_config(None, [f"--run.output_dir={tmp_path}", "--run.tensorboard=false"])
    log = MetricsLog(cfg, tmp_path)
    log.log({"step": 0, "reward/mean": 1.0})
    log.close()
    assert not (tmp_path / "tensorboard").exists()


def test_wandb_offline_run_records_the_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = load_config(None, [f"--run.output_dir={tmp_path}", "--run.wandb_project=instructray"])
    log = MetricsLog(cfg, tmp_path, stage="ppo")
    log.log({"step": 0, "reward/mean": 0.25})
    log.log({"step": 1, "reward/mean": 0.125})
    log.close()
    # finish() returns before W&B's service has written the run's records out (under load the file
    # held only its header); teardown waits for the service to close its files.
    import wandb

    wandb.teardown()
    [record] = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    data = record.read_bytes()
    assert b"reward/mean" in data and b"0.125" in data
    assert b"instructray" in data  # the project
