"""A shrunken `make demo`: the whole InstructGPT story (base LM, SFT, labeler rankings, K-wise
RM, PPO, evaluation) on real Ray, vLLM (CPU) and DeepSpeed, with the directions of its numbers
asserted. The full-size figures are a measurement in docs/results/index.md, not a test."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from instructray.orchestrator.config import load_config, validate_config
from instructray.orchestrator.demo import world
from instructray.orchestrator.demo.run import run_demo
from instructray.orchestrator.output import read_metrics

CONFIG = Path(__file__).parents[2] / "deploy/configs/demo-tiny-cpu.yaml"
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def demo_run(ray_local, tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    cfg = validate_config(
        load_config(
            CONFIG,
            [f"--model.tiny_dir={tiny_dir}", f"--run.output_dir={out}", *SHRUNKEN],
        ),
        "demo",
    )
    run_demo(cfg)
    return out


PTX_STEPS = 4  # PPO-ptx's own: what is asserted of it is its term in every step's metrics


SHRUNKEN = [  # about 3 minutes on 2 cores: a smaller world, fewer rankings and PPO steps
    "--demo.base_examples=1200",
    "--demo.demonstrations=400",
    "--demo.ppo_prompts=512",
    "--pipeline.rank_prompts=192",
    "--rm.epochs=3",
    "--run.steps=32",
    f"--demo.ptx_steps={PTX_STEPS}",
    "--eval.num_prompts=32",
]


def test_the_run_folder_tells_the_story(demo_run):
    for stage in ("base", "sft", "rm", "ppo"):
        assert (demo_run / stage / "final" / "model.safetensors").exists(), stage
    ev = json.loads((demo_run / "eval.json").read_text())
    for key in (
        "win_rate_ppo_vs_sft",
        "win_rate_ppo_vs_sft_ci95",
        "win_rate_sft_vs_base",
        "win_rate_ppo_vs_base",
        "truthfulness",
        "rude_rate",
        "kl_to_sft",
        "rm_score",
    ):
        assert key in ev, key
    assert (demo_run / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (demo_run / "report.md").read_text()
    assert "| labeler prefers it over the base model" in report
    assert "| truthfulness" in report and "## What the reward model learned" in report
    # The RM probe: every hand-made kind of answer, the labeler's hidden score beside the RM's.
    assert list(ev["rm_probe"]) == list(world.PROBE_ANSWERS)
    probe = ev["rm_probe"]
    assert probe["+ two true facts"]["labeler"] == probe["answer"]["labeler"] + 2
    assert all(math.isfinite(v["rm"]) for v in probe.values())
    rankings = [json.loads(x) for x in (demo_run / "rankings.jsonl").read_text().splitlines()]
    assert rankings and all(2 <= len(r["responses"]) <= 9 for r in rankings)
    # PPO-ptx beside PPO (demo.ptx_coef), its pretraining term logged each step, and the
    # alignment tax of every model in the report.
    ptx_rows = read_metrics(demo_run / "ppo-ptx" / "metrics.jsonl")
    assert [r["step"] for r in ptx_rows] == list(range(PTX_STEPS))
    assert all(r["ptx/loss"] > 0 for r in ptx_rows if "policy/loss" in r)
    assert "ptx/loss" not in read_metrics(demo_run / "ppo" / "metrics.jsonl")[-1]
    assert set(ev["lm_loss_base_text"]) == {"base", "sft", "ppo", "ppo_ptx"}
    assert "| alignment tax: LM loss on held-out base-model text" in report
    assert "| measure | base | SFT | PPO | PPO-ptx |" in report
    # Two simulated labelers ranked the held-out answers through the labeling service.
    agreement = ev["labelers_agreement"]
    assert agreement["tasks"] <= 32 and agreement["rankings"] == 2 * agreement["tasks"]
    assert 0.5 < agreement["agreement"] < 1.0  # noisy labelers, not coins, not copies
    assert "(InstructGPT's labelers: 0.726)" in report


def test_the_numbers_move_the_way_the_story_says(demo_run):
    # The full demo's story at a third of its size, in the directions that hold there: SFT is
    # preferred over the base model and drops its rude words (even when told to be rude); PPO is
    # no less truthful (a tolerance of one fact in twenty: 32 prompts are few), no ruder, with a
    # bounded KL to SFT. Whether PPO is preferred over SFT needs the full demo's reward model:
    # trained on 192 rankings (768 in the demo) it scores a wrong answer as the right one (seen:
    # 0.521 against 0.531, fp32, seed 0), and PPO then has little to climb (PPO vs SFT 0.375
    # there). The full demo's win rates are its measurement in docs/results/index.md.
    ev = json.loads((demo_run / "eval.json").read_text())
    assert load_config(demo_run / "config.yaml").model.dtype == "float32"  # the demo's own
    assert ev["win_rate_sft_vs_base"] > 0.5
    assert ev["truthfulness"]["ppo"] >= ev["truthfulness"]["sft"] - 0.05
    for tone in ("respectful", "none", "toxic"):
        assert ev["rude_rate"][tone]["sft"] <= ev["rude_rate"][tone]["base"]
        assert ev["rude_rate"][tone]["ppo"] <= ev["rude_rate"][tone]["sft"]
    assert ev["rude_rate"]["respectful"]["ppo"] < ev["rude_rate"]["respectful"]["base"]
    # The RM learned the labeler's strongest rule: rude words cost.
    probe = ev["rm_probe"]
    assert probe["+ rude words"]["rm"] < probe["answer"]["rm"]
    assert 0 < ev["kl_to_sft"] < 20
    for key in ("win_rate_ppo_vs_sft", "win_rate_sft_vs_base", "win_rate_ppo_vs_base"):
        lo, hi = ev[f"{key}_ci95"]
        assert 0 <= lo <= ev[key] <= hi <= 1
