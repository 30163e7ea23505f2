"""LoRA in the learner (learner.lora_rank): real DeepSpeed ZeRO-3 ranks (gloo) on the tiny policy,
checked against PEFT and transformers on one process. Only adapters train; the reference is the
policy's base with its adapters off, equal to a frozen copy; the merged export and the saved
folders are what PEFT and transformers make of the adapter."""

from __future__ import annotations

import json

import pytest
import ray
import safetensors.torch
import torch
from testdata import learner_config
from transformers import AutoModelForCausalLM

from instructray.actors.learner.group import LearnerGroup
from instructray.actors.lora import ADAPTER_CONFIG, ADAPTER_CONFIG_KEY, ADAPTER_WEIGHTS, MERGED
from instructray.actors.rollout.adapter import read_metadata
from instructray.actors.scoring.scorers import ReferenceActor
from instructray.actors.sequences import Experience, make_sequence_batch, response_logprobs
from instructray.orchestrator.config import load_config

TIMEOUT_S = 300
RANK = 8


def _batch(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(5, 300, (int(k),), generator=g).tolist() for k in [3, 5, 2, 4] * 2]
    responses = torch.randint(5, 300, (n, 5), generator=g).tolist()
    return make_sequence_batch(prompts[:n], responses, pad_id=1)


@pytest.fixture(scope="module")
def lora(ray_local, tiny_policy, tiny_reward):
    """2 ranks under ZeRO-3 (every weight partitioned), fp32, the policy and the critic with
    rank-8 adapters; one train call has moved the adapters away from their no-op start."""
    cfg = learner_config(
        tiny_policy,
        tiny_reward,
        "--learner.zero_stage=3",
        "--learner.micro_batch_size=2",
        "--ppo.minibatch_size=4",
        f"--learner.lora_rank={RANK}",
        "--learner.lr=1e-2",
        "--learner.critic_lora=true",
        f"--run.timeout_s={TIMEOUT_S}",
    )
    group = LearnerGroup(cfg)
    batch = _batch(8, seed=1)
    before = group.logprobs_and_values(batch, with_reference=True)
    g = torch.Generator().manual_seed(2)
    mask = batch.response_mask
    experience = Experience(
        batch,
        old_logprobs=before["old_logprobs"],
        old_values=before["values"],
        advantages=torch.randn(mask.shape, generator=g) * mask,
        returns=torch.randn(mask.shape, generator=g) * mask,
    )
    metrics = group.train(experience)
    yield group, batch, before, metrics
    group.shutdown()


def test_only_the_adapters_train_and_hold_optimizer_state(lora):
    group, _, _, metrics = lora
    sizes = group.model_parameters()
    policy, trainable = (
        sizes["learner/policy_parameters"],
        sizes["learner/policy_trainable_parameters"],
    )
    # Rank 8 on the 7 projections of 2 layers (hidden 128, kv 64, mlp 256): r x (in + out) each.
    per_layer = RANK * ((128 + 128) * 2 + (128 + 64) * 2 + (128 + 256) * 2 + (256 + 128))
    assert trainable == 2 * per_layer < policy / 10
    # The critic's adapters and its value head (1 x 128) train; its trunk does not.
    assert sizes["learner/critic_trainable_parameters"] == 2 * per_layer + 128
    # AdamW's two fp32 moments and ZeRO-3's fp32 master copy: 12 bytes per trainable weight.
    assert metrics["learner/policy_optimizer_state_bytes"] == 12 * trainable
    assert metrics["policy/optimizer_steps"] == 1 and metrics["policy/skipped_steps"] == 0


def test_reference_is_the_base_with_adapters_off_equal_to_a_frozen_copy(lora, tiny_policy):
    group, batch, before, _ = lora
    after = group.logprobs_and_values(batch, with_reference=True)
    # A frozen copy in this process, computing as each rank does: its rows in micro-batches of
    # 2, on one thread (a rank's num_cpus; a thread count changes how matmuls sum).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        frozen = ReferenceActor(tiny_policy, "float32", batch_size=2).logprobs(batch)
    finally:
        torch.set_num_threads(threads)
    mask = batch.response_mask.bool()
    assert torch.equal(after["ref_logprobs"][mask], frozen[mask])
    assert torch.equal(before["ref_logprobs"][mask], frozen[mask])
    # Before training the adapters are a no-op (B = 0); after it the policy has moved.
    assert torch.equal(before["old_logprobs"][mask], frozen[mask])
    assert (after["old_logprobs"] - frozen)[mask].abs().max() > 1e-3


def test_adapter_and_merged_exports_are_what_peft_makes_of_them(lora, tiny_policy, tmp_path):
    from peft import PeftModel

    group, batch, _, _ = lora
    data = ray.get(group.export_adapter(), timeout=TIMEOUT_S)
    adapter = safetensors.torch.load(data)
    assert adapter and all(".lora_A.weight" in k or ".lora_B.weight" in k for k in adapter)
    config = json.loads(read_metadata(data)[ADAPTER_CONFIG_KEY])
    assert config["r"] == RANK and config["peft_type"] == "LORA"
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / ADAPTER_WEIGHTS).write_bytes(data)
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config))
    base = AutoModelForCausalLM.from_pretrained(tiny_policy, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(folder)).eval()
    learner = group.logprobs_and_values(batch, with_values=False)["old_logprobs"]
    with torch.no_grad():
        peft_logprobs = response_logprobs(peft_model, batch)
    mask = batch.response_mask.bool()
    assert (learner - peft_logprobs)[mask].abs().max() < 1e-5
    # The merged export: W + (alpha / r) B A under the base model's names.
    merged = safetensors.torch.load(ray.get(group.export_weights(), timeout=TIMEOUT_S))
    want = peft_model.merge_and_unload().state_dict()
    assert set(merged) == set(want) - {"lm_head.weight"}  # tied to the embeddings
    for name, value in merged.items():
        assert torch.allclose(value, want[name], atol=1e-6, rtol=0), name


def test_saved_folder_holds_the_adapter_and_merged_holds_the_model(lora, tiny_policy, tmp_path):
    from peft import PeftModel

    group, batch, _, _ = lora
    group.save_pretrained(str(tmp_path / "final"))
    final = tmp_path / "final"
    assert (final / ADAPTER_CONFIG).is_file() and (final / ADAPTER_WEIGHTS).is_file()
    assert json.loads((final / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
    base = AutoModelForCausalLM.from_pretrained(tiny_policy, dtype=torch.float32)
    with torch.no_grad():
        adapted = response_logprobs(PeftModel.from_pretrained(base, str(final)).eval(), batch)
        merged_model = AutoModelForCausalLM.from_pretrained(str(final / MERGED)).eval()
        merged = response_logprobs(merged_model, batch)
    learner = group.logprobs_and_values(batch, with_values=False)["old_logprobs"]
    mask = batch.response_mask.bool()
    assert (adapted - learner)[mask].abs().max() < 1e-5
    assert (merged - learner)[mask].abs().max() < 1e-5


def test_a_saved_adapter_loads_back_as_it_was_and_a_misfit_is_named(tiny_policy, tmp_path):
    from instructray.actors.lora import add_adapters, load_adapter

    learner = load_config(None, ["--learner.lora_rank=4"]).learner

    def fresh():
        model = AutoModelForCausalLM.from_pretrained(tiny_policy, dtype=torch.float32)
        return add_adapters(model, learner, "CAUSAL_LM").eval()

    trained = fresh()
    g = torch.Generator().manual_seed(0)
    for name, param in trained.named_parameters():
        if "lora_B" in name:
            param.data = torch.randn(param.shape, generator=g) * 0.1
    trained.save_pretrained(str(tmp_path / "adapter"))  # PEFT's own format
    resumed = fresh()
    load_adapter(resumed, str(tmp_path / "adapter"))
    ids = torch.tensor([[10, 11, 12, 13, 40, 7]])
    with torch.no_grad():
        assert torch.equal(trained(ids).logits, resumed(ids).logits)
        assert not torch.equal(trained(ids).logits, fresh()(ids).logits)
    learner.lora_targets = ["q_proj"]  # fewer adapters than the folder holds
    with pytest.raises(ValueError, match="adapter .* does not fit learner.lora_"):
        load_adapter(fresh(), str(tmp_path / "adapter"))


@pytest.mark.parametrize("task", ["CAUSAL_LM", "SEQ_CLS"])
def test_adapter_tensors_carry_the_names_peft_saves_them_under(task, tiny_policy, tiny_reward):
    from peft.utils import get_peft_model_state_dict
    from transformers import AutoModelForSequenceClassification

    from instructray.actors.lora import adapter_weights, add_adapters

    learner = load_config(None, ["--learner.lora_rank=4"]).learner
    if task == "SEQ_CLS":  # a reward model or critic: its value head trains whole
        model = AutoModelForSequenceClassification.from_pretrained(tiny_reward, num_labels=1)
    else:
        model = AutoModelForCausalLM.from_pretrained(tiny_policy)
    model = add_adapters(model, learner, task)
    ours = dict(adapter_weights(model))
    want = get_peft_model_state_dict(model)
    assert ours.keys() == want.keys()
    assert all(torch.equal(ours[k], want[k]) for k in want)
    assert any("score" in k for k in want) == (task == "SEQ_CLS")
