"""`instructray bench --plan`'s inputs: a model's size from its name, the config's shapes, a
bench run folder's phase seconds; and the report's arithmetic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from instructray.orchestrator.config import load_config
from instructray.orchestrator.ppo.bench_plan import (
    MEASURED,
    MEASURED_SHAPE,
    params_from_name,
    plan_report,
    reference_from_run,
    target_shape,
)
from instructray.orchestrator.ppo.plan import CPU_2CORE, H100, plan_step, scale

CONFIG_7B = Path(__file__).parents[3] / "deploy" / "configs" / "pipeline-7b-8gpu.yaml"


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("/mnt/shared/models/Qwen2.5-7B", 7e9),
        ("tiny://policy-30m", 30e6),
        ("meta-llama/Llama-3.1-8B-Instruct", 8e9),
        ("Qwen/Qwen2.5-0.5B", 0.5e9),
    ],
)
def test_params_from_name(name, params):
    assert params_from_name(name) == pytest.approx(params)


def test_a_name_without_a_size_says_what_to_pass():
    with pytest.raises(ValueError, match="--plan-params"):
        params_from_name("/mnt/shared/runs/x/sft/final")


def test_target_shape_of_the_7b_config():
    cfg = load_config(CONFIG_7B)
    shape = target_shape(cfg, 7e9, 4)
    # 128 prompts x 4 samples; 1024 + 512 tokens; one reference and one reward actor on a GPU
    # each do a whole forward, the learner's two forwards are shared by 4 ranks (0.5 each).
    assert shape.sequences == 512
    assert (shape.prompt_tokens, shape.new_tokens, shape.engines) == (1024, 512, 4)
    assert (shape.learner_ranks, shape.score_forwards_per_device) == (4, 1.0)


def test_reference_from_a_run_folder_drops_the_warm_up(tmp_path):
    phases = {"generate": 1.0, "score": 2.0, "advantages": 0.01, "train": 3.0, "sync": 0.5}
    rows = [
        {"step": 0, "learner/policy_parameters": 1000} | {f"timing/{p}": 99.0 for p in phases},
        {"step": 1} | {f"timing/{p}": v for p, v in phases.items()},
        {"step": 2} | {f"timing/{p}": 3 * v for p, v in phases.items()},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {
        "rollout": {
            "prompts_per_step": 8,
            "samples_per_prompt": 4,
            "max_new_tokens": 32,
            "num_engines": 1,
        },
        "data": {"max_prompt_tokens": 16},
        "learner": {"num_ranks": 1},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    measured, shape, _ = reference_from_run(str(tmp_path))
    # Steps 1 and 2 only: the mean of v and 3v is 2v.
    assert measured == pytest.approx({p: 2 * v for p, v in phases.items()})
    assert (shape.params, shape.sequences, shape.prompt_tokens, shape.new_tokens) == (
        1000,
        32,
        16,
        32,
    )


def test_report_shows_the_models_numbers_for_2_4_8_engines():
    cfg = load_config(CONFIG_7B)
    text = plan_report(cfg)
    for engines in (2, 4, 8):
        target = scale(MEASURED, MEASURED_SHAPE, CPU_2CORE, target_shape(cfg, 7e9, engines), H100)
        plan = plan_step(target)
        assert f"{engines} engines: generate floor" in text
        assert f"= {plan.lockstep:.1f} s" in text and f"= {plan.pipelined:.1f} s" in text
