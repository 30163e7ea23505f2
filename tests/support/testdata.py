"""Helpers shared by the tests: writing data files, reading run folders."""

from __future__ import annotations

import json
from pathlib import Path


def write_jsonl(path: Path, rows: list[dict]) -> str:
    """Write rows as JSON lines; returns the path as a string (what config fields take)."""
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def metrics_of(folder: Path) -> list[dict]:
    """The rows of a run folder's metrics.jsonl."""
    lines = (Path(folder) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


PPO_TINY = Path(__file__).parents[2] / "deploy/configs/ppo-tiny-cpu.yaml"


def ppo_tiny_config(tiny_dir: str, out: Path, *overrides: str):
    """The tiny PPO config with the session's tiny models, writing into out; validated."""
    from orchestrator.config import load_config

    return load_config(
        PPO_TINY, [f"--model.tiny_dir={tiny_dir}", f"--run.output_dir={out}", *overrides]
    ).validate("ppo")
