"""The run folder contract: config.yaml, metrics.jsonl (one flat JSON object per step), final/.

A run is complete when `final/` exists; it is written last, by rename, so a failed run never
looks finished.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from instructray.orchestrator.config import Config, dump_config
from instructray.orchestrator.config.precision import resolve_precision
from instructray.orchestrator.output.metrics import MetricsLog


def check_run_folder(path: Path, resume: str) -> None:
    """run.output_dir can hold this run: a folder (or none yet) without a finished run's
    final/ unless resuming, under a folder this user can write."""
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"run.output_dir: {path} is a file, not a folder; choose a folder")
    if (path / "final").exists() and not resume:
        raise FileExistsError(
            f"{path} already holds a finished run (final/); choose another run.output_dir or "
            f"remove it"
        )
    parent = path
    while not parent.exists():  # the nearest folder that exists is where mkdir writes
        parent = parent.parent
    if not parent.is_dir():
        raise FileExistsError(f"run.output_dir: {parent} (in {path}) is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"run.output_dir: cannot write in {parent} (permission denied)")


class RunFolder:
    """Writes one run's folder."""

    def __init__(self, cfg: Config, stage: str = ""):
        # Absolute: stage folders become model paths that actors and Ray Train workers open
        # from their own working directories.
        self.path = Path(cfg.run.output_dir).resolve()
        check_run_folder(self.path, cfg.run.resume)
        self.path.mkdir(parents=True, exist_ok=True)
        resolve_precision(cfg)  # config.yaml records the dtype and attention used, never auto
        dump_config(cfg, self.path / "config.yaml")
        self.metrics_path = self.path / "metrics.jsonl"
        self.stage = stage
        self._cfg = cfg
        self._metrics: MetricsLog | None = None  # opened on the first row

    @property
    def final_dir(self) -> Path:
        return self.path / "final"

    def log(self, metrics: dict[str, Any]) -> None:
        """One step's flat metrics: metrics.jsonl, the Ray dashboard, TensorBoard, W&B."""
        if self._metrics is None:
            self._metrics = MetricsLog(self._cfg, self.path, stage=self.stage)
        self._metrics.log(metrics)

    def truncate_metrics(self, step: int) -> None:
        truncate_metrics(self.metrics_path, step)

    def write_json(self, name: str, data: Any) -> None:
        path = self.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1) + "\n")

    def close(self) -> None:
        """Flush and close the metric sinks (TensorBoard, W&B)."""
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None

    def read_metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.metrics_path)


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the rows of steps >= step (written after the checkpoint a run resumes from)."""
    if not path.exists():
        return
    rows = [r for r in read_metrics(path) if r.get("step", 0) < step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl ([] when there is none yet)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


class PhaseTimer:
    """Seconds per named phase of one step: `with timer("generate"): ...`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        return {f"timing/{k}": round(v, 4) for k, v in self.seconds.items()}
