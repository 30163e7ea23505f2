"""Run-folder and model paths are absolute: actors and Ray Train workers run elsewhere."""

from __future__ import annotations

import os
from pathlib import Path

from orchestrator.config import load_config
from orchestrator.model_specs import resolve_models
from orchestrator.output import RunFolder


def test_relative_paths_become_absolute(tmp_path, tiny_policy, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.symlink(tiny_policy, tmp_path / "policy")
    cfg = load_config(None, ["--run.output_dir=runs/x", "--model.policy=policy"])
    folder = RunFolder(cfg)
    assert folder.path == tmp_path / "runs" / "x" and folder.final_dir.is_absolute()
    resolve_models(cfg, need_reward=False)
    assert Path(cfg.model.policy).is_absolute() and Path(cfg.model.policy).exists()
    assert Path(cfg.model.tokenizer).is_absolute()


def test_split_by_load_balances_tokens_and_leaves_no_engine_idle():
    from orchestrator.ppo.trainer import split_by_load, split_evenly

    assert split_by_load([1] * 8, 2) == split_evenly(8, 2)
    assert split_by_load([1] * 5, 2) == [range(0, 3), range(3, 5)]
    # one long prompt: its engine takes fewer prompts
    assert split_by_load([10, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], 2) == [range(0, 1), range(1, 11)]
    assert split_by_load([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 10], 2) == [range(0, 10), range(10, 11)]
    assert split_by_load([100, 1, 1], 3) == [range(0, 1), range(1, 2), range(2, 3)]
    parts = split_by_load([3, 5, 2, 8, 1, 4, 6, 2], 3)
    assert [len(p) for p in parts] and all(len(p) for p in parts)
    assert sorted(i for p in parts for i in p) == list(range(8))
