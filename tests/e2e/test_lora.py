"""PPO with LoRA end to end: `instructray ppo --config deploy/configs/ppo-tiny-cpu.yaml
--learner.lora_rank=8` on real Ray, vLLM (CPU build, its LoRA path) and DeepSpeed (ZeRO-2, gloo),
in the dtype `auto` picks (bf16 where the CPU has AVX512-BF16, else fp32), once per
rollout.lora_sync mode: the adapter alone to the engines, or merged weights. The reference is the
policy's base (no reference actor); the adapter run's checkpoint resumes exactly; its final/
loads with PEFT, and final/merged/ with transformers and vLLM."""

from __future__ import annotations

import json

import pytest
import ray
import torch
import yaml
from testdata import PPO_TINY, SYNCED, metrics_of, ppo_tiny_config
from transformers import AutoModelForCausalLM

from instructray.actors.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, MERGED
from instructray.actors.rollout.actor import RolloutActor
from instructray.actors.sequences import make_sequence_batch, response_logprobs
from instructray.orchestrator.cli import main
from instructray.orchestrator.ppo.run import run_ppo

pytestmark = pytest.mark.e2e
STEPS = 20
CLOCK = ("timing/", "throughput/")  # numbers of the clock, not of the computation


def _ppo(tiny_dir: str, out, *overrides: str) -> None:
    args = [f"--model.tiny_dir={tiny_dir}", f"--run.output_dir={out}", *overrides]
    assert main(["ppo", "--config", str(PPO_TINY), "--learner.lora_rank=8", *args]) == 0


@pytest.fixture(scope="module")
def adapter_run(ray_local, tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora-adapter") / "run"
    _ppo(tiny_dir, out, "--run.save_every=10")
    return out


@pytest.fixture(scope="module")
def merged_run(ray_local, tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora-merged") / "run"
    _ppo(tiny_dir, out, "--rollout.lora_sync=merged")
    return out


@pytest.mark.parametrize("mode", ["adapter", "merged"])
def test_lora_trains_with_every_sync_verified_and_the_reward_rising(mode, request):
    out = request.getfixturevalue(f"{mode}_run")
    rows = metrics_of(out)
    assert [r["step"] for r in rows] == list(range(STEPS))
    assert [r["weight_sync/version"] for r in rows] == list(range(1, STEPS + 1))
    assert all(r["weight_sync/max_logprob_diff"] < SYNCED["bfloat16"] for r in rows)
    # The reward model's score: the last 10 steps against the first 10 (seen in both modes:
    # 0.15-0.18 -> 0.27-0.29; a step's mean varies by ~0.05 with its prompts).
    scores = [r["reward/mean"] for r in rows]
    assert sum(scores[10:]) > sum(scores[:10]), scores
    # The reference is the policy's base: equal to the policy before its first update (exactly
    # where both forwards take the same kernels; within float rounding on AVX2-only CPUs).
    assert abs(rows[0]["kl/mean"]) <= 1e-6
    placement = json.loads((out / "placement.json").read_text())
    assert "reference" not in placement and len(placement["rollout"]) == 1


def test_only_adapters_have_optimizer_state_and_the_adapter_is_what_is_sent(
    adapter_run, merged_run
):
    adapter, merged = metrics_of(adapter_run), metrics_of(merged_run)
    first = adapter[0]
    trainable = first["learner/policy_trainable_parameters"]
    assert 0 < trainable < first["learner/policy_parameters"] / 10
    # fp32 (master) weights and AdamW's two fp32 moments of the adapters only.
    assert all(r["learner/policy_optimizer_state_bytes"] == 12 * trainable for r in adapter)
    # An adapter sync sends the adapter's tensors; a merged sync every weight of the base, in the
    # run's dtype (model.dtype auto: bf16 on a CPU with AVX512-BF16, else fp32).
    dtype = yaml.safe_load((adapter_run / "config.yaml").read_text())["model"]["dtype"]
    width = {"bfloat16": 2, "float32": 4}[dtype]
    base = first["learner/policy_parameters"] - trainable
    assert {r["weight_sync/bytes"] for r in adapter} == {width * trainable}
    assert {r["weight_sync/bytes"] for r in merged} == {width * base}


def test_resumed_from_a_checkpoint_the_run_goes_on_exactly(adapter_run, tiny_dir, tmp_path):
    checkpoint = adapter_run / "checkpoints" / "step-000010"
    out = tmp_path / "resumed"
    cfg = ppo_tiny_config(
        tiny_dir, out, "--learner.lora_rank=8", f"--run.resume={checkpoint}", "--run.steps=12"
    )
    run_ppo(cfg)
    straight, resumed = metrics_of(adapter_run)[10:12], metrics_of(out)
    assert [r["step"] for r in resumed] == [10, 11]
    for a, b in zip(straight, resumed, strict=True):
        for key, value in a.items():
            if not key.startswith(CLOCK):
                assert b[key] == pytest.approx(value, abs=1e-6), (a["step"], key)


def test_final_holds_the_adapter_for_peft_and_a_merged_model_for_transformers_and_vllm(
    adapter_run,
):
    from peft import PeftModel

    final = adapter_run / "final"
    assert (final / ADAPTER_WEIGHTS).is_file() and (final / ADAPTER_CONFIG).is_file()
    base_path = json.loads((final / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    merged = AutoModelForCausalLM.from_pretrained(str(final / MERGED), dtype=torch.float32).eval()
    sequences = [[10, 11, 12, 13, 14, 15], [40, 7, 9, 100, 101]]
    batch = make_sequence_batch([s[:1] for s in sequences], [s[1:] for s in sequences], 0)
    mask = batch.response_mask.bool()
    with torch.no_grad():
        untrained = response_logprobs(base.eval(), batch)
        adapted = PeftModel.from_pretrained(base, str(final)).eval()  # adapters go into base
        want = response_logprobs(adapted, batch)
        got = response_logprobs(merged, batch)
    # bf16 weights, merged once in fp32: the two agree to bf16's rounding of W + scaling B A.
    assert (want - got)[mask].abs().max() < 0.02
    assert (want - untrained)[mask].abs().max() > 0.05  # the adapter did move the policy
    engine = ray.remote(RolloutActor).options(num_cpus=1)
    engine = engine.remote(
        str(final / MERGED), dtype="bfloat16", max_model_len=64, kv_cache_gib=0.25
    )
    try:
        served = ray.get(engine.prompt_logprobs.remote(sequences), timeout=300)
    finally:
        ray.kill(engine)
    for i, row in enumerate(served):
        diff = (torch.tensor(row) - got[i, : len(row)]).abs().max()
        assert diff < SYNCED["bfloat16"], (i, diff)
