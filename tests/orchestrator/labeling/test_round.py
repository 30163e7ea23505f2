"""A pipeline's labeling round without the models: sampled rows published once as tasks, bots
ranking them through the service, the wait ending with the batch's rankings; a round that times
out keeps what was ranked, and resumed, waits on for the same tasks."""

import json

import pytest

from instructray.orchestrator.config import load_config
from instructray.orchestrator.labeling.round import labeling_round
from instructray.orchestrator.labeling.service import LabelingTimeout
from instructray.orchestrator.labeling.store import Store

BOT = "instructray.actors.scoring.rule_rewards:rank_by_target_word"


def sampled(n=4):
    rows = [
        {"prompt": f"Say cat {i}.", "responses": ["cat cat", "dog", "cat"], "author": f"u{i}"}
        for i in range(n)
    ]
    calls = []

    def sample():
        calls.append(1)
        return [dict(r, formatted=r["prompt"]) for r in rows]

    return sample, calls


def config(tmp_path, *overrides):
    return load_config(
        None,
        [
            "--pipeline.labeler=human",
            "--labeling.port=0",
            f"--labeling.bot={BOT}",
            "--labeling.timeout_s=120",
            *overrides,
        ],
    )


def test_a_round_publishes_once_and_returns_the_bots_rankings(tmp_path):
    cfg = config(tmp_path, "--labeling.bots=2", "--labeling.overlap=2")
    sample, calls = sampled()
    rows = labeling_round(cfg, tmp_path / "labeling-2", "round-2", sample, {"round": 2})
    # one row per prompt: the two bots' rankings merged; most 'cat' first
    assert len(rows) == 4 and all(r["ranking"] == [0, 2, 1] for r in rows)
    assert all(r["rankings"] == 2 and r["provenance"]["round"] == 2 for r in rows)
    metrics = [
        json.loads(x) for x in (tmp_path / "labeling-2" / "metrics.jsonl").read_text().splitlines()
    ]
    assert metrics[-1]["labeling/rankings"] == 8 and metrics[-1]["labeling/agreement"] == 1.0
    assert calls == [1]


def test_a_round_that_times_out_keeps_its_rankings_and_waits_on_when_resumed(tmp_path):
    sample, calls = sampled()
    folder = tmp_path / "labeling-2"
    with pytest.raises(LabelingTimeout, match="0 of 4 rankings of round-2"):
        labeling_round(config(tmp_path, "--labeling.timeout_s=0.5"), folder, "round-2", sample, {})
    store = Store(f"sqlite:///{tmp_path / 'labeling.db'}")
    assert store.counts("round-2")["tasks"] == 4  # published, kept
    store.close()
    # resumed with a bot: the same tasks (not sampled again), now ranked
    rows = labeling_round(config(tmp_path, "--labeling.bots=1"), folder, "round-2", sample, {})
    assert len(rows) == 4 and calls == [1]
