"""`instructray pipeline` end to end: SFT -> RM -> PPO, then a second RM + PPO round on rankings
of the policy's own samples, through the CLI on real Ray, vLLM (CPU) and DeepSpeed; tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from testdata import metrics_of

from actors.rule_rewards import rank_by_target_word
from orchestrator.cli import main

CONFIG = Path(__file__).parents[2] / "deploy/configs/pipeline-tiny-cpu.yaml"
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pipeline_run(ray_local, tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline") / "run"
    code = main(
        [
            "pipeline",
            "--config",
            str(CONFIG),
            f"--model.tiny_dir={tiny_dir}",
            f"--run.output_dir={out}",
            "--run.steps=4",
            "--sft.epochs=1",
            "--rm.epochs=1",
            "--pipeline.iterations=2",
            "--pipeline.labeler=actors.rule_rewards:rank_by_target_word",
            "--pipeline.rank_prompts=12",
            "--pipeline.ranking_models=[tiny://policy]",  # its samples join the policy's
        ]
    )
    assert code == 0
    return out


def test_every_stage_has_its_folder_and_the_pipeline_ends_with_final(pipeline_run):
    for stage in ("sft", "rm", "ppo", "rm-2", "ppo-2"):
        assert (pipeline_run / stage / "final" / "model.safetensors").exists(), stage
        assert metrics_of(pipeline_run / stage), stage
    assert (pipeline_run / "final").resolve() == (pipeline_run / "ppo-2" / "final").resolve()
    assert (pipeline_run / "rm" / "final" / "score_stats.json").exists()
    assert "eval/pairwise_accuracy" in metrics_of(pipeline_run / "rm")[-1]
    assert yaml.safe_load((pipeline_run / "config.yaml").read_text())["pipeline"]["iterations"] == 2


def test_stages_are_wired_as_instructgpt(pipeline_run):
    sft = str((pipeline_run / "sft" / "final").resolve())
    ppo = yaml.safe_load((pipeline_run / "ppo" / "config.yaml").read_text())["model"]
    assert Path(ppo["policy"]).resolve() == Path(sft)
    assert Path(ppo["reference"]).resolve() == Path(sft)
    assert Path(ppo["reward"]).resolve() == (pipeline_run / "rm" / "final").resolve()
    ppo2 = yaml.safe_load((pipeline_run / "ppo-2" / "config.yaml").read_text())["model"]
    assert Path(ppo2["policy"]).resolve() == (pipeline_run / "ppo" / "final").resolve()
    assert Path(ppo2["reference"]).resolve() == Path(sft)  # still held near the SFT model
    assert Path(ppo2["reward"]).resolve() == (pipeline_run / "rm-2" / "final").resolve()
    rm = yaml.safe_load((pipeline_run / "rm" / "config.yaml").read_text())["model"]
    assert Path(rm["policy"]).resolve() == Path(sft)  # the RM starts from the SFT model


def test_second_round_ranks_the_policys_own_samples(pipeline_run):
    rows = [json.loads(x) for x in (pipeline_run / "rankings-2.jsonl").read_text().splitlines()]
    new = [r for r in rows if "user_id" not in r]  # tiny://rankings rows carry a user id
    assert 0 < len(new) <= 12 and len(rows) == len(new) + 128
    for row in new:
        assert 2 <= len(row["responses"]) <= 4
        assert len(set(row["responses"])) == len(row["responses"])
        assert row["ranking"] == rank_by_target_word(row["prompt"], row["responses"])
    [other] = yaml.safe_load((pipeline_run / "rm-2" / "config.yaml").read_text())["pipeline"][
        "ranking_models"
    ]
    assert (Path(other) / "model.safetensors").exists()  # tiny://policy, resolved and loaded
