"""The rollout section: vLLM engines, sampling, the weight sync to the engines, and the pool's
size (fixed, scaled by `instructray scale`, or following the cluster with autoscale)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from instructray.orchestrator.config.fields import param


@dataclass
class RolloutConfig:
    """vLLM rollout engines."""

    num_engines: int = param(1, "Number of vLLM engines; prompts are shared among them.", gt=0)
    tensor_parallel_size: int = param(
        1,
        "GPUs per engine (tensor parallel, on one node; vLLM's workers are Ray actors of one GPU "
        "each); 1 on CPU.",
        ge=1,
    )
    prompts_per_step: int = param(8, "Prompts per PPO step.", gt=0)
    samples_per_prompt: int = param(4, "Responses sampled per prompt (n).", gt=0)
    max_new_tokens: int = param(32, "Longest response in tokens.", gt=0)
    temperature: float = param(1.0, "Sampling temperature (> 0).", gt=0)
    top_p: float = param(1.0, "Nucleus sampling mass in (0, 1].", gt=0, le=1)
    top_k: int = param(-1, "Top-k sampling; -1 = off.", ge=-1)
    stop: list[str] = param([], "Extra stop strings besides the tokenizer's EOS.")
    ignore_eos: bool = param(
        False, "Always generate max_new_tokens (fixed length, for benchmarks)."
    )
    kv_cache_gib: float = param(
        1.0, "KV cache per engine in GiB on CPU (VLLM_CPU_KVCACHE_SPACE).", gt=0
    )
    gpu_memory_utilization: float = param(
        0.5, "Share of GPU memory an engine may take.", gt=0, le=1
    )
    enforce_eager: bool | Literal["auto"] = param(
        "auto",
        "Skip CUDA graph capture: true (faster start, slower decode) or false; auto = eager on "
        "CPU, CUDA graphs on GPU.",
    )
    weight_sync: Literal["object_store", "gloo", "nccl"] = param(
        "object_store",
        "Transport for learner -> engine weights: object_store (Ray's object store; works "
        "everywhere), or a bucketed broadcast from learner rank 0 over a torch.distributed group "
        "of this backend: nccl (GPUs on both sides; the fast path on clusters) or gloo (CPU).",
    )
    lora_sync: Literal["auto", "adapter", "merged"] = param(
        "auto",
        "With learner.lora_rank > 0, what a sync sends: the adapters alone (adapter; versioned, "
        "through the object store; the engines serve them through vLLM's LoRA path) or the "
        "merged full weights through rollout.weight_sync (merged: for engines that cannot serve "
        "adapters). auto = adapter.",
    )
    sync_bucket_mib: float = param(
        256.0,
        "Bucket size of every weight transport in MiB: no message of a sync carries more "
        "(a larger tensor goes alone). The object store's buckets cross vLLM's engine process "
        "one call each, which cannot carry 4 GiB.",
        gt=0,
        lt=4096,
    )
    sync_mean_logprob_diff: float | None = param(
        None,
        "Stop the run when the mean |engine - learner| log-prob over the probe batch's tokens "
        "is larger after a sync; null = the model dtype's rounding spread: 1e-4 in float32, "
        "0.05 in bfloat16, 0.01 in float16 (the weights' bits are checked exactly besides).",
        gt=0,
    )
    sync_p99_logprob_diff: float | None = param(
        None,
        "Stop the run when the 99th percentile of |engine - learner| log-prob over the probe "
        "batch's tokens is larger after a sync; null = 1e-3 in float32, 1.0 in bfloat16, 0.25 "
        "in float16 (the max is logged as weight_sync/max_logprob_diff, not checked).",
        gt=0,
    )
    placement_strategy: Literal["PACK", "SPREAD"] = param(
        "PACK",
        "Placement-group strategy for the engines across nodes. With tensor_parallel_size > 1 "
        "each engine has a group of its own instead, its GPUs on one node.",
    )
    cpus_per_engine: float = param(1.0, "CPUs reserved per engine (its torch threads).", ge=0)
    autoscale: bool = param(
        False,
        "Grow the engine pool into the cluster's free resources up to rollout.max_engines (and "
        "ask Ray's autoscaler for them); an engine whose node leaves leaves the pool, down to "
        "rollout.min_engines.",
    )
    max_staleness: int = param(
        0,
        "Generation pipelined with training: with k >= 1 the engines generate the next step's "
        "samples while the learner trains on this step's (one batch ahead), and no sample more "
        "than k weight versions old is trained on; the off-policy gap is corrected by "
        "ppo.tis_cap. 0 = lockstep (generate, score, train, sync in turn).",
        ge=0,
    )
    min_engines: int = param(1, "Fewest engines with rollout.autoscale.", ge=1)
    max_engines: int = param(
        0,
        "Most engines with rollout.autoscale; 0 = rollout.num_engines. A local Ray the run "
        "starts leaves room for this many (for autoscale or `instructray scale`).",
        ge=0,
    )
