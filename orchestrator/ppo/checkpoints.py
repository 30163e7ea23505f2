"""PPO checkpoints in the run folder: written atomically, the last `run.keep_last` kept.

    checkpoints/
      step-000004/         one complete checkpoint (the step the run continues from)
        learner/           DeepSpeed state of policy and critic per rank, counters, RNG
        hf/                the policy in Hugging Face format (loadable by transformers, vLLM)
        driver.json        step, weight version, prompt position, KL coefficient, probe batch
      latest               the name of the newest complete checkpoint, written last

A checkpoint is written into `.tmp-step-N/`, renamed to `step-N/` when complete, and only then
named in `latest` (itself replaced by rename): a crash at any point leaves the previous
checkpoint in force and never a half-written one.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

DRIVER_FILE = "driver.json"


class CheckpointError(ValueError):
    """A checkpoint to resume from is missing or incomplete."""


class Checkpoints:
    def __init__(self, run_dir: Path, keep_last: int):
        self.root = Path(run_dir) / "checkpoints"
        self.keep_last = max(keep_last, 1)

    def save(self, step: int, write: Callable[[Path], dict[str, Any]]) -> Path:
        """write(folder) fills a fresh folder and returns the driver state; -> the checkpoint."""
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"step-{step:06d}"
        tmp = self.root / f".tmp-{name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        driver = write(tmp)
        (tmp / DRIVER_FILE).write_text(json.dumps(driver))  # last inside: marks it complete
        final = self.root / name
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        pointer = self.root / ".latest.tmp"
        pointer.write_text(name + "\n")
        os.replace(pointer, self.root / "latest")
        self._prune()
        return final

    def _prune(self) -> None:
        done = sorted(p for p in self.root.glob("step-*") if (p / DRIVER_FILE).exists())
        for old in done[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)

    def latest(self) -> Path | None:
        pointer = self.root / "latest"
        if not pointer.exists():
            return None
        path = self.root / pointer.read_text().strip()
        return path if (path / DRIVER_FILE).exists() else None

    def resolve(self, resume: str) -> Path | None:
        """`run.resume`: "" -> None (start fresh); "auto" -> the latest checkpoint, if any;
        otherwise a checkpoint folder, which must be complete."""
        if not resume:
            return None
        if resume == "auto":
            return self.latest()
        path = Path(resume)
        if not (path / DRIVER_FILE).exists():
            raise CheckpointError(
                f"run.resume = {resume}: not a complete checkpoint folder (no {DRIVER_FILE}); "
                f"give a checkpoints/step-N folder or auto"
            )
        return path


def read_driver_state(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / DRIVER_FILE).read_text())
