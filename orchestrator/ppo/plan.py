"""A step-time cost model on paper: PPO steps in lockstep (rollout.max_staleness = 0) against
generation pipelined with training (max_staleness = 1), scaled from a measured reference run.

Each phase's time on the target = its measured time on the reference x (its roofline floor on
the target / its floor on the reference). A floor is the least time the phase's FLOPs or bytes
take on a device: forward-only work 2 N per token (score; generate's prefill and decode
compute), training 6 N per token, a decode step reads the weights once per engine (2 bytes x N,
bf16), the weight sync moves 2 bytes x N over the sync link. Assumptions:
- the reference run's measured/floor ratio per phase (Python, Ray calls, attention, small
  kernels) carries over to the target; most of a small CPU run's sync is fixed cost (calls,
  the probe check), which this scales with the bytes, so read the target's sync as high;
- every role has devices of its own (none colocated), so generate overlaps scoring and training;
- reward and reference models are the policy's size; the same estimator and ppo_epochs in both
  runs (the count of trained models cancels in the ratio); every response is new_tokens long;
- ignored: KV-cache reads and attention FLOPs, gradient checkpointing's recomputed forward,
  ZeRO-3's gathers, prefix caching of a prompt's samples, stragglers between engines.
Pipelined: engines generate step s+1 while step s is scored and trained, and take the new
weights between generate calls, so a step takes max(generate, score + advantages + train) + sync.
"""

from __future__ import annotations

from dataclasses import dataclass

BF16_BYTES = 2
# H100 SXM5 bf16 dense tensor-core peak, no sparsity: 989 TFLOP/s (NVIDIA's H100 datasheet).
H100_BF16_PEAK_FLOPS = 989e12
# Assumed, not measured: the share of that peak the phases' matmuls reach. Like for like with
# CPU_MATMUL_FLOPS (a measured matmul rate): each phase's own losses come on top, from the
# reference run's measured/floor ratio.
ASSUMED_MFU = 0.6
# H100 SXM5 HBM3: 3.35 TB/s (the datasheet; a peak, so decode's floor is optimistic).
H100_HBM3_BYTES_PER_S = 3.35e12
# NCCL broadcast in one node over NVLink 4: 450 GB/s one way per GPU (the datasheet's 900 GB/s
# both ways); assumed ~350 GB/s of bus bandwidth for large buckets. Across nodes InfiniBand NDR
# gives 400 Gb/s = 50 GB/s per NIC: pass that as link_bytes_per_s for a multi-node layout.
NVLINK_BCAST_BYTES_PER_S = 350e9
# The reference machine, 2-core AMD EPYC with AVX512-BF16: bf16 matmul ~370 GFLOP/s
# (docs/results/index.md, measured beside its 2026-12-03 bf16 table).
CPU_MATMUL_FLOPS = 370e9
# A bf16 copy of 61M elements (the 30M model's weights) at ~15 GB/s read + write, 2 threads, on a
# machine of that kind (measured for this plan, 2026-12-06). On the CPU the weights reach the
# engine through copies in Ray's shared memory, so this is also its sync link.
CPU_MEMORY_BYTES_PER_S = 15e9
# The driver's token rewards, GAE and whitening, a CPU process in both runs: ~1 us per response
# token (1-3 ms for the bench's 1,024 tokens, docs/results/index.md). It cancels in the ratio.
DRIVER_TOKENS_PER_S = 1e6

PHASES = ("generate", "score", "advantages", "train", "sync")


@dataclass(frozen=True)
class Hardware:
    """One device's rates: matmul FLOP/s, memory bytes/s, weight-sync link bytes/s."""

    flops: float
    memory_bytes_per_s: float
    link_bytes_per_s: float


H100 = Hardware(H100_BF16_PEAK_FLOPS * ASSUMED_MFU, H100_HBM3_BYTES_PER_S, NVLINK_BCAST_BYTES_PER_S)
CPU_2CORE = Hardware(CPU_MATMUL_FLOPS, CPU_MEMORY_BYTES_PER_S, CPU_MEMORY_BYTES_PER_S)


@dataclass(frozen=True)
class StepShape:
    """What one PPO step computes, and on how many devices."""

    params: float  # N, the policy's parameters
    sequences: int  # prompts_per_step x samples_per_prompt
    prompt_tokens: int  # per sequence
    new_tokens: int  # per sequence (every response this long)
    engines: int  # rollout engines, one device each
    learner_ranks: int  # one device each; they share the training FLOPs
    # Whole-batch scoring forwards on the busiest scoring device: 3 on one CPU (reference,
    # reward, the learner's old log-probs); 1 with a reference and a reward actor of one GPU each.
    score_forwards_per_device: float


def generate_floor(shape: StepShape, hw: Hardware) -> tuple[float, float]:
    """-> (prefill s, one decode step s) on each engine, which holds sequences / engines rows."""
    n, rows = shape.params, shape.sequences / shape.engines
    prefill = 2 * n * rows * shape.prompt_tokens / hw.flops
    decode_compute = 2 * n * rows / hw.flops
    decode_weights = BF16_BYTES * n / hw.memory_bytes_per_s  # every decode step reads them once
    return prefill, max(decode_compute, decode_weights)


def floors(shape: StepShape, hw: Hardware) -> dict[str, float]:
    """The least seconds each phase's FLOPs or bytes take on hw."""
    n = shape.params
    tokens = shape.sequences * (shape.prompt_tokens + shape.new_tokens)
    prefill, decode_step = generate_floor(shape, hw)
    return {
        "generate": prefill + shape.new_tokens * decode_step,
        "score": shape.score_forwards_per_device * 2 * n * tokens / hw.flops,
        "advantages": shape.sequences * shape.new_tokens / DRIVER_TOKENS_PER_S,
        "train": 6 * n * tokens / (shape.learner_ranks * hw.flops),
        "sync": BF16_BYTES * n / hw.link_bytes_per_s,
    }


def scale(
    measured: dict[str, float],
    reference: StepShape,
    reference_hw: Hardware,
    target: StepShape,
    target_hw: Hardware,
) -> dict[str, float]:
    """Target seconds per phase: measured x (floor on the target / floor on the reference)."""
    ours, theirs = floors(reference, reference_hw), floors(target, target_hw)
    return {p: measured[p] * theirs[p] / ours[p] for p in PHASES}


@dataclass(frozen=True)
class StepPlan:
    """Seconds per step in both modes, and each role's idle seconds per step in each."""

    phases: dict[str, float]
    lockstep: float  # generate + score + advantages + train + sync
    pipelined: float  # max(generate, score + advantages + train) + sync
    idle: dict[str, tuple[float, float]]  # role -> (lockstep, pipelined)


def plan_step(phases: dict[str, float]) -> StepPlan:
    """Lockstep and pipelined (max_staleness 1) step times from phase seconds."""
    generate, sync = phases["generate"], phases["sync"]
    rest = phases["score"] + phases["advantages"] + phases["train"]  # learner side, in order
    lockstep = generate + rest + sync
    pipelined = max(generate, rest) + sync  # sync can't overlap: both sides take part in it
    busy = {
        "engines": generate + sync,
        "scorers": phases["score"],  # the learner's old log-probs and values are in score
        "learner": phases["train"] + sync,
    }
    idle = {role: (lockstep - b, pipelined - b) for role, b in busy.items()}
    return StepPlan(dict(phases), lockstep, pipelined, idle)
