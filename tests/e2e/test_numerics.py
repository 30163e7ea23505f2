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
from testdata import every_sync_close, metrics_of, ppo_tiny_config

from instructray.actors.faults import ENV
from instructray.orchestrator.ppo.numerics import NonFiniteError
from instructray.orchestrator.ppo.run import run_ppo

pytestmark = pytest.mark.e2e


config = ppo_tiny_config


def weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step-{step:06d}" / "hf" / "model.safetensors"))


def test_nonfinite_numbers_skip_steps_and_too_many_in_a_row_stop_the_run(
    ray_local, tiny_dir, tmp_path, monkeypatch
):
    # One optimizer step per train call (16 rows per rank, minibatch 16). Learner rank 0's loss
    # turns NaN in its 2nd train call (step 1): rank 1's is finite, yet both must skip, and the
    # run goes on. The reference returns a NaN first row at steps 3 and 4: two skipped steps in
    # a row stop the run.
    markers = tmp_path / "markers"
    markers.mkdir()
    faults = "nan:learner:train:2,nan:reference:score:4,nan:reference:score:5"
    monkeypatch.setenv(ENV, f"{faults}@{markers}")
    run = tmp_path / "run"
    saving = ("--run.save_every=1", "--run.keep_last=6", "--ppo.max_skipped_steps=2")
    with pytest.raises(
        NonFiniteError,
        match=r"2 steps in a row skipped .*ppo\.max_skipped_steps = 2.*step 4: "
        r"ref_logprobs: \d+ in rows \[0\].*checkpoint .*step-000005",
    ):
        run_ppo(config(tiny_dir, run, "--run.steps=6", *saving))
    assert not (run / "final").exists()
    rows = metrics_of(run)
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    assert [r.get("policy/skipped_steps") for r in rows] == [0, 1, 0, None, None]
    assert [r.get("value/skipped_steps") for r in rows] == [0, 0, 0, None, None]
    assert [r["train/skipped_steps"] for r in rows] == [0, 1, 1, 2, 3]
    assert every_sync_close(run)
    # Step 1 left the policy as step 0 did; step 2 trained again; steps 3 and 4 left it alone.
    after = {s: weights(run, s + 1) for s in range(5)}
    embed = "model.embed_tokens.weight"
    assert all(torch.equal(after[0][k], after[1][k]) for k in after[0])
    assert not torch.equal(after[1][embed], after[2][embed])
    assert all(torch.equal(after[2][k], after[4][k]) for k in after[2])
    assert all(torch.isfinite(t).all() for t in after[4].values())
    diagnostics = json.loads((run / "diagnostics" / "step-1.json").read_text())
    assert "all 1 policy optimizer steps" in diagnostics["non_finite"]
    for step in (3, 4):
        diagnostics = json.loads((run / "diagnostics" / f"step-{step}.json").read_text())
        stats = diagnostics["statistics"]
        assert stats["ref_logprobs"]["nonfinite"] > 0 and stats["ref_logprobs"]["rows"] == [0]
        assert stats["scores"]["nonfinite"] == 0 and stats["rewards"]["nonfinite"] > 0
        # One critic step per batch: its training forward gives GAE the values (ppo.old_values
        # auto), so the experience the driver checks holds token rewards and no values.
        assert "values" not in stats and "advantages" not in stats
        assert stats["ref_logprobs"]["max"] <= 0  # statistics of the finite log-probs
        assert "0" in diagnostics["prompts"]
    # The run resumes from the checkpoint it stopped with.
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-000005"
    monkeypatch.delenv(ENV)
    run_ppo(config(tiny_dir, run, "--run.steps=6", "--run.resume=auto", *saving))
    rows = metrics_of(run)
    assert [r["step"] for r in rows] == list(range(6))
    assert rows[-1]["train/skipped_steps"] == 3 and rows[-1]["policy/skipped_steps"] == 0
    assert (run / "final").is_dir()
