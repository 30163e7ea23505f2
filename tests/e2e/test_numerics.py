"""Non-finite numbers in a PPO run (real Ray, vLLM, DeepSpeed): a non-finite loss skips the
optimizer step on every rank and the run goes on; non-finite experience skips the step before
training; ppo.max_skipped_steps in a row stop the run with batch statistics and a checkpoint it
resumes from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from testdata import metrics_of

from actors.faults import ENV
from orchestrator.config import load_config
from orchestrator.numerics import NonFiniteError
from orchestrator.ppo_run import run_ppo

CONFIG = Path(__file__).parents[2] / "deploy/configs/ppo-tiny-cpu.yaml"
pytestmark = pytest.mark.e2e


def config(tiny_dir, out: Path, *overrides: str):
    return load_config(
        CONFIG, [f"--model.tiny_dir={tiny_dir}", f"--run.output_dir={out}", *overrides]
    ).validate("ppo")


def weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step-{step:06d}" / "hf" / "model.safetensors"))


def test_a_nonfinite_loss_skips_the_policy_step_and_the_run_goes_on(
    ray_local, tiny_dir, tmp_path, monkeypatch
):
    # One optimizer step per train call (16 rows per rank, minibatch 16). Learner rank 0's loss
    # turns NaN in its 2nd train call (step 1): rank 1's is finite, yet both must skip.
    (tmp_path / "markers").mkdir()
    monkeypatch.setenv(ENV, f"nan:learner:train:2@{tmp_path / 'markers'}")
    run = tmp_path / "run"
    run_ppo(config(tiny_dir, run, "--run.steps=3", "--run.save_every=1", "--run.keep_last=3"))
    rows = metrics_of(run)
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert [r["policy/skipped_steps"] for r in rows] == [0, 1, 0]
    assert [r["value/skipped_steps"] for r in rows] == [0, 0, 0]
    assert [r["train/skipped_steps"] for r in rows] == [0, 1, 1]
    assert all(r["weight_sync/max_logprob_diff"] < 1e-4 for r in rows)
    # Step 1 left the policy as step 0 did; step 2 trained again from there.
    after_0, after_1, after_2 = weights(run, 1), weights(run, 2), weights(run, 3)
    assert all(torch.equal(after_0[k], after_1[k]) for k in after_0)
    assert not torch.equal(
        after_1["model.embed_tokens.weight"], after_2["model.embed_tokens.weight"]
    )
    assert all(torch.isfinite(t).all() for t in after_2.values())
    diagnostics = json.loads((run / "diagnostics" / "step-1.json").read_text())
    assert "all 1 policy optimizer steps" in diagnostics["non_finite"]
    assert (run / "final").is_dir()


def test_nonfinite_experience_in_a_row_stops_with_statistics_and_a_checkpoint(
    ray_local, tiny_dir, tmp_path, monkeypatch
):
    # The reference returns a NaN first row at steps 1 and 2: two skipped steps in a row.
    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setenv(ENV, f"nan:reference:score:2,nan:reference:score:3@{markers}")
    run = tmp_path / "run"
    cfg = config(tiny_dir, run, "--run.steps=5", "--ppo.max_skipped_steps=2")
    with pytest.raises(
        NonFiniteError,
        match=r"2 steps in a row skipped .*ppo\.max_skipped_steps = 2.*step 2: "
        r"ref_logprobs: \d+ in rows \[0\].*checkpoint .*step-000003",
    ):
        run_ppo(cfg)
    assert not (run / "final").exists()
    rows = metrics_of(run)
    assert [r["train/skipped_steps"] for r in rows] == [0, 1, 2]
    assert "policy/loss" in rows[0] and "policy/loss" not in rows[1]
    for step in (1, 2):
        diagnostics = json.loads((run / "diagnostics" / f"step-{step}.json").read_text())
        stats = diagnostics["statistics"]
        assert stats["ref_logprobs"]["nonfinite"] > 0 and stats["ref_logprobs"]["rows"] == [0]
        assert stats["scores"]["nonfinite"] == 0 and stats["values"]["nonfinite"] == 0
        assert stats["ref_logprobs"]["max"] <= 0  # statistics of the finite log-probs
        assert "0" in diagnostics["prompts"]
    # The skipped steps left the weights alone; the run resumes from its checkpoint.
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-000003"
    run_ppo(config(tiny_dir, run, "--run.steps=4", "--run.resume=auto"))
    rows = metrics_of(run)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert rows[-1]["train/skipped_steps"] == 2 and rows[-1]["policy/skipped_steps"] == 0
    assert (run / "final").is_dir()
