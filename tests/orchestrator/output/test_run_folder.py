"""Run-folder and model paths are absolute: actors and Ray Train workers run elsewhere."""

from __future__ import annotations

import os
from pathlib import Path

from instructray.orchestrator.config import load_config
from instructray.orchestrator.model_specs import resolve_models
from instructray.orchestrator.output import RunFolder


def test_relative_paths_become_absolute(tmp_path, tiny_policy, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.symlink(tiny_policy, tmp_path / "policy")
    cfg = load_config(None, ["--run.output_dir=runs/x", "--model.policy=policy"])
    folder = RunFolder(cfg)
    assert folder.path == tmp_path / "runs" / "x" and folder.final_dir.is_absolute()
    resolve_models(cfg, need_reward=False)
    assert Path(cfg.model.policy).is_absolute() and Path(cfg.model.policy).exists()
    assert Path(cfg.model.tokenizer).is_absolute()
