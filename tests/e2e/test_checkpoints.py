"""PPO checkpoints and exact resume on real Ray, vLLM (CPU) and DeepSpeed (ZeRO-2, gloo): 2 steps,
a checkpoint, a new run resuming for 2 more equals 4 uninterrupted steps, across an epoch
boundary of the prompt set, with PPO-ptx's pretraining batches and generation pipelined with
training (the samples drawn ahead, a version behind, are in the checkpoint) and the adaptive KL
controller (its coefficient, changed by every step, is in the checkpoint); in bf16, the precision
of GPU runs (its master weights and AdamW state are fp32 and must come back exactly). The prompts
are GSM8K-format rows read by data.prompt_field=question, and a reward file outside the project
sees each sample's own row (its columns travel in the checkpoint with the samples drawn ahead).
Resume at a fixed KL coefficient: tests/e2e/test_lora.py (adapters) and test_faults.py."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from testdata import metrics_of, ppo_tiny_config, write_jsonl

from instructray.orchestrator.data.sources import tiny_gsm8k
from instructray.orchestrator.ppo.checkpoints import CheckpointError
from instructray.orchestrator.ppo.run import run_ppo

pytestmark = pytest.mark.e2e
# Numbers that depend on the clock, not on the computation.
CLOCK = ("timing/", "throughput/")


config = ppo_tiny_config


@pytest.fixture(scope="module")
def runs(ray_local, tiny_dir, tiny_policy, tiny_reward, tmp_path_factory):
    base = tmp_path_factory.mktemp("resume")
    # 12 prompts, 8 per step: step 1 crosses into the second epoch, the resume point (after
    # step 2) sits inside it.
    prompts = write_jsonl(base / "gsm8k.jsonl", tiny_gsm8k(12, seed=3))
    common = [
        f"--data.prompts={prompts}",
        "--data.prompt_field=question",
        "--data.max_prompt_tokens=64",
        "--model.dtype=bfloat16",
        "--learner.lr=3e-4",
        "--run.keep_last=1",
        "--ppo.ptx_coef=0.5",  # PPO-ptx's draws resume too (seeded by the train call)
        "--data.pretrain=tiny://pretrain",
        "--rollout.max_staleness=1",  # the next step's samples are in each checkpoint
        # The KL coefficient moves every step: each step's 32 samples scale it by
        # 1 + clip(KL / 1.0 - 1, -0.2, 0.2) x 32 / 64 (0.9 here, where |KL| stays under 0.2).
        "--ppo.adaptive_kl=true",
        "--ppo.kl_target=1.0",
        "--ppo.kl_horizon=64",
    ]
    straight, resumed = base / "straight", base / "resumed"
    reward = {run: _own_reward(base / f"{run.name}-reward", run) for run in (straight, resumed)}
    run_ppo(config(tiny_dir, straight, *common, reward[straight], "--run.steps=4"))
    saving = [*common, "--run.save_every=1"]  # the uninterrupted run saves none: no side effect
    run_ppo(config(tiny_dir, resumed, *saving, reward[resumed], "--run.steps=2"))
    run_ppo(
        config(tiny_dir, resumed, *saving, reward[resumed], "--run.steps=4", "--run.resume=auto")
    )
    return straight, resumed


# A user's reward file (outside the project), beside the reward model: it records what each
# sample's row gave it and adds nothing to the score.
OWN_REWARD = """
import json

def recorder(prompts, responses, raw_prompts, answer, id, **columns):
    with open({seen!r}, "a") as f:
        for row in zip(prompts, responses, raw_prompts, answer, id):
            f.write(json.dumps(row) + "\\n")
    return [0.0] * len(responses)
"""


def _own_reward(folder, run) -> str:
    folder.mkdir()
    (folder / "own_reward.py").write_text(
        OWN_REWARD.format(seen=str(run.parent / f"{run.name}.seen"))
    )
    return f"--reward.function=model, {folder / 'own_reward.py'}:recorder"


def test_the_reward_file_saw_each_samples_own_row_across_the_resume(runs):
    straight, resumed = runs
    by_id = {row["id"]: row for row in tiny_gsm8k(12, seed=3)}
    seen = {}
    for run in runs:
        seen[run] = [
            json.loads(x) for x in (run.parent / f"{run.name}.seen").read_text().split("\n") if x
        ]
        assert len(seen[run]) == 4 * 32  # 8 prompts x 4 samples a step, each scored once
        for prompt, _, raw, answer, id_ in seen[run]:
            assert (raw, answer) == (by_id[id_]["question"], by_id[id_]["answer"])
            assert raw in prompt and raw != prompt  # the prompt through the chat template
    # The same samples with the same rows, those of steps 2 and 3 scored after the resume (step
    # 2's drawn ahead before it and kept in the checkpoint).
    assert seen[straight] == seen[resumed]


def test_resumed_run_ends_with_the_same_weights(runs):
    straight, resumed = runs
    a = load_file(str(straight / "final" / "model.safetensors"))
    b = load_file(str(resumed / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6, rtol=0), name
    hf = load_file(str(resumed / "checkpoints" / "step-000004" / "hf" / "model.safetensors"))
    assert all(torch.equal(hf[n], b[n]) for n in b)  # the checkpoint's HF export is the policy


def test_resumed_run_logs_the_same_metrics(runs):
    straight, resumed = runs
    rows_a, rows_b = metrics_of(straight), metrics_of(resumed)
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b] == [0, 1, 2, 3]
    for a, b in zip(rows_a, rows_b, strict=True):
        assert a.keys() == b.keys(), a["step"]
        for key, value in a.items():
            if key.startswith(CLOCK):
                continue
            assert b[key] == pytest.approx(value, abs=1e-6), (a["step"], key)


def test_resumed_run_goes_on_with_the_adaptive_kl_coefficient_it_saved(runs):
    straight, resumed = runs
    coef_a = [r["kl_coef"] for r in metrics_of(straight)]
    coef_b = [r["kl_coef"] for r in metrics_of(resumed)]
    # Logged before each step's update: step 0's is ppo.kl_coef, each later one has moved.
    assert coef_a[0] == 0.05 and len(set(coef_a)) == len(coef_a) == 4
    assert coef_b == pytest.approx(coef_a, rel=1e-9)  # steps 2 and 3 ran after the resume


def test_checkpoints_are_complete_and_the_last_n_are_kept(runs):
    _, resumed = runs
    root = resumed / "checkpoints"
    assert (root / "latest").read_text().strip() == "step-000004"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["step-000004"]  # keep_last=1
    state = json.loads((root / "step-000004" / "driver.json").read_text())
    assert state["step"] == 4 and state["version"] == 4
    assert state["ahead_lag"] == 1  # step 4's samples, drawn under version 3
    assert (root / "step-000004" / "ahead.pt").exists()
    assert state["sampler"]["epoch"] == 3  # 40 prompts drawn from 12 (step 4's ahead)
    assert (root / "step-000004" / "hf" / "model.safetensors").exists()
    assert (root / "step-000004" / "learner" / "rank-1.pt").exists()


def test_resume_from_a_folder_that_is_not_a_checkpoint_fails_before_starting(tiny_dir, tmp_path):
    cfg = config(tiny_dir, tmp_path / "run", f"--run.resume={tmp_path}")
    with pytest.raises(CheckpointError, match="not a complete checkpoint folder"):
        run_ppo(cfg)
