"""SFT and the K-wise reward model under Ray Train, end to end: real Ray (TorchTrainer), real
DeepSpeed ZeRO-2 over gloo on 2 workers, tiny models. No component is mocked."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from testdata import metrics_of, write_jsonl

from instructray.actors.faults import ENV
from instructray.actors.remote import RemoteError
from instructray.orchestrator.config import load_config, validate_config
from instructray.orchestrator.supervised import run_rm, run_sft

pytestmark = pytest.mark.e2e

WORDS = "cat dog sun sea tree bird fish moon star rain snow wind rock leaf milk bread".split()


def config(tiny_dir, out: Path, *overrides: str):
    return load_config(
        None,
        [
            "--model.policy=tiny://policy",
            f"--model.tiny_dir={tiny_dir}",
            f"--run.output_dir={out}",
            "--learner.num_ranks=2",
            "--learner.zero_stage=2",
            "--data.eval_fraction=0.25",
            *overrides,
        ],
    )


def demonstrations(n: int = 96) -> list[dict]:
    """A learnable rule: repeat the word three times."""
    rng = random.Random(0)
    rows = []
    for i in range(n):
        word = rng.choice(WORDS)
        rows.append(
            {
                "prompt": f"Repeat {word}.",
                "response": f"{word} {word} {word}",
                "user_id": f"u{i % 24}",
            }
        )
    return rows


ALL_TIED_EVERY = 40


def rankings(n: int = 160) -> list[dict]:
    """K = 4 responses of four words each; the more 'cat' the better (the hidden rule); equal
    counts tie (two answers of every 5th row, all four of every 40th)."""
    rng = random.Random(1)
    rows = []
    for i in range(n):
        counts = rng.sample(range(5), 4)
        if i % 5 == 0:  # two answers tie
            counts[1] = min(counts[0], 3)
            counts[0] = counts[1]
        if i % ALL_TIED_EVERY == 1:  # all four tie: the row teaches nothing
            counts = [1] * 4
        responses = []
        for c in counts:
            words = ["cat"] * c + [rng.choice(WORDS[1:]) for _ in range(4 - c)]
            rng.shuffle(words)
            responses.append(" ".join(words))
        ranking = [
            [j for j in range(4) if counts[j] == c] for c in sorted(set(counts), reverse=True)
        ]
        rows.append(
            {
                "prompt": "Say four words.",
                "responses": responses,
                "ranking": ranking,
                "user_id": f"u{i % 40}",
            }
        )
    return rows


def test_reward_model_learns_a_ranking_rule(ray_local, tiny_dir, tmp_path):
    data = write_jsonl(tmp_path / "rankings.jsonl", rankings())
    out = tmp_path / "rm"
    cfg = validate_config(
        config(
            tiny_dir,
            out,
            f"--data.rankings={data}",
            "--rm.lr=2e-3",
            "--rm.epochs=3",
            "--rm.batch_size=8",
        ),
        "rm",
    )
    run_rm(cfg)
    rows = metrics_of(out)
    evals = [r for r in rows if "eval/pairwise_accuracy" in r]
    assert evals[-1]["eval/pairwise_accuracy"] >= 0.9, [r["eval/pairwise_accuracy"] for r in evals]
    assert rows[0]["data/curation/all_tied"] == 160 // ALL_TIED_EVERY
    assert sum(r.get("train/tied_pairs", 0) for r in rows) > 0  # dropped, and counted
    stats = json.loads((out / "final" / "score_stats.json").read_text())
    assert stats["count"] > 0 and stats["std"] > 0
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(out / "final")
    assert model.config.num_labels == 1 and model.config.pad_token_id is not None
    assert torch.isfinite(model.score.weight).all()


def test_sft_learns_survives_a_worker_crash_and_a_failed_run_resumes(
    ray_local, tiny_dir, tmp_path, monkeypatch
):
    data = write_jsonl(tmp_path / "demos.jsonl", demonstrations())
    common = (
        f"--data.demonstrations={data}",
        "--sft.lr=3e-3",
        "--sft.epochs=4",
        "--sft.max_tokens_per_batch=256",
    )
    crash = "sft:epoch:2"  # a worker dies in epoch 2's second step, after rank 0 logged one

    # Inside one job: Ray Train restarts the group from the epoch-1 checkpoint (FailureConfig).
    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setenv(ENV, f"{crash}@{markers}")
    restarted = tmp_path / "restarted"
    run_sft(validate_config(config(tiny_dir, restarted, *common, "--run.max_failures=1"), "sft"))
    assert len(list(markers.iterdir())) == 1
    rows = metrics_of(restarted)
    want = [(r["step"], r["epoch"]) for r in rows]
    steps = [r["step"] for r in rows if "train/loss" in r]
    assert steps == list(range(1, len(steps) + 1))  # every step once: none lost, none twice
    evals = [r for r in rows if "eval/loss" in r]  # before training and after each epoch
    assert [r["epoch"] for r in evals] == [0, 1, 2, 3, 4]
    assert rows[0]["step"] == 0 and rows[0]["data/eval_examples"] > 0
    # it learned the rule: the held-out loss fell, and what it wrote loads
    assert evals[-1]["eval/loss"] < 0.6 * evals[0]["eval/loss"], [r["eval/loss"] for r in evals]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(restarted / "final")
    assert sum(p.numel() for p in model.parameters()) > 0

    # Across jobs: without restarts the job fails; a fresh start in its folder is refused, and
    # run.resume=auto continues after epoch 1, its rows those of the run above.
    markers = tmp_path / "markers-2"
    markers.mkdir()
    monkeypatch.setenv(ENV, f"{crash}@{markers}")
    failed = tmp_path / "failed"
    with pytest.raises(RemoteError, match="sft: training failed"):
        run_sft(validate_config(config(tiny_dir, failed, *common, "--run.max_failures=0"), "sft"))
    monkeypatch.delenv(ENV)
    assert not (failed / "final").exists()
    with pytest.raises(FileExistsError, match="unfinished sft run.*--run.resume=auto"):
        run_sft(validate_config(config(tiny_dir, failed, *common), "sft"))
    run_sft(validate_config(config(tiny_dir, failed, *common, "--run.resume=auto"), "sft"))
    assert [(r["step"], r["epoch"]) for r in metrics_of(failed)] == want
    assert (failed / "final" / "model.safetensors").is_file()
