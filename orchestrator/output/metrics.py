"""Where a run's numbers go: metrics.jsonl (the contract), the Ray dashboard, TensorBoard, W&B.

Every step's flat metrics (`reward/mean`, `timing/generate`, ...) are written once, by `MetricsLog`:
- `metrics.jsonl` in the run folder (always);
- Ray's metrics (`ray.util.metrics` gauges, shown by the dashboard and scraped by Prometheus):
  `reward/mean` becomes `instructray_reward_mean`, labelled `run` and `role` (the process that
  measured it: driver, rollout, reward, reference, learner). Prometheus shows them with Ray's
  `ray_` prefix in front;
- TensorBoard event files in `<run folder>/tensorboard/` (`run.tensorboard`);
- W&B when `run.wandb_project` is set (`WANDB_MODE=offline` works; the key comes from the
  environment or `wandb login`, never from the command line).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any

from instructray.orchestrator.config import Config

logger = logging.getLogger(__name__)

PREFIX = "instructray_"
RUN_ENV = "INSTRUCTRAY_RUN"  # the run label, handed to every actor through its runtime_env


def append_metrics(path: Path, metrics: dict[str, Any]) -> None:
    """Append one flat JSON object; NaN/inf become null so the line stays valid JSON."""
    clean = {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v)
        for k, v in metrics.items()
    }
    with Path(path).open("a") as f:
        f.write(json.dumps(clean) + "\n")


def metric_name(key: str) -> str:
    """`reward/mean` -> `instructray_reward_mean` (Prometheus allows [a-zA-Z0-9_:] only)."""
    return PREFIX + re.sub(r"[^a-zA-Z0-9_]+", "_", key).strip("_")


def run_label(cfg: Config) -> str:
    """The `run` label of every metric: run.name, else the run folder's name."""
    return cfg.run.name or Path(cfg.run.output_dir).name


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numeric entries (a gauge or a scalar plot cannot show null, text or NaN)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


class RayGauges:
    """`ray.util.metrics` gauges of one process, created on first use, labelled run and role."""

    def __init__(self, run: str, role: str, extra_tags: dict[str, str] | None = None):
        self.tags = {"run": run, "role": role, **(extra_tags or {})}
        self._gauges: dict[str, Any] = {}

    def set(self, metrics: dict[str, Any]) -> None:
        import ray

        if not ray.is_initialized():  # a unit test or a tool without Ray: nothing to export to
            return
        from ray.util.metrics import Gauge

        for key, value in _numbers(metrics).items():
            gauge = self._gauges.get(key)
            if gauge is None:
                gauge = Gauge(metric_name(key), description=key, tag_keys=tuple(self.tags))
                self._gauges[key] = gauge
            gauge.set(value, tags=self.tags)


_actor_gauges: dict[str, RayGauges] = {}


def report_throughput(role: str, tokens: int, seconds: float) -> None:
    """An actor's own tokens/s for the call it just served: `instructray_tokens_per_s{role}`."""
    if seconds > 0:
        report_from_actor(role, {"tokens_per_s": tokens / seconds})


def report_from_actor(role: str, metrics: dict[str, Any]) -> None:
    """Export an actor's own measurements to the Ray dashboard, labelled with its role."""
    gauges = _actor_gauges.get(role)
    if gauges is None:
        gauges = RayGauges(os.environ.get(RUN_ENV, "default"), role)
        _actor_gauges[role] = gauges
    try:
        gauges.set(metrics)
    except Exception as e:  # monitoring never stops a step
        logger.warning("metrics: could not export %s metrics: %s", role, e)


class MetricsLog:
    """One stage's metrics: metrics.jsonl, Ray gauges, TensorBoard and W&B, one call per step."""

    def __init__(self, cfg: Config, folder: Path, role: str = "driver", stage: str = ""):
        self.path = Path(folder) / "metrics.jsonl"
        self.gauges = RayGauges(run_label(cfg), role, {"stage": stage} if stage else None)
        self._tb: Any = None
        self._wandb: Any = None
        if cfg.run.tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(logdir=str(Path(folder) / "tensorboard"), flush_secs=10)
        if cfg.run.wandb_project:
            import wandb

            name = "/".join(x for x in (run_label(cfg), stage) if x)
            self._wandb = wandb.init(
                project=cfg.run.wandb_project,
                name=name,
                dir=str(folder),
                config=cfg.to_dict(),
                reinit="create_new",
            )

    def log(self, metrics: dict[str, Any]) -> None:
        append_metrics(self.path, metrics)
        numbers = _numbers(metrics)
        step = int(metrics.get("step", 0))
        try:
            self.gauges.set(numbers)
        except Exception as e:  # the dashboard is a view; metrics.jsonl already holds the row
            logger.warning("metrics: could not export to Ray: %s", e)
        if self._tb is not None:
            for key, value in numbers.items():
                if key != "step":
                    self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(numbers, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
