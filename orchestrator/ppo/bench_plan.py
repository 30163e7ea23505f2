"""`instructray bench --plan`: the step time a config's shapes would take on H100s, in lockstep
and with generation pipelined with training (orchestrator/ppo/plan.py), from the phase seconds
of a measured CPU bench run; it prints the table and its arithmetic. Starts nothing."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import yaml

from instructray.orchestrator.config import Config
from instructray.orchestrator.ppo.plan import (
    ASSUMED_MFU,
    BF16_BYTES,
    CPU_2CORE,
    H100,
    H100_BF16_PEAK_FLOPS,
    PHASES,
    StepPlan,
    StepShape,
    floors,
    generate_floor,
    plan_step,
    scale,
)

# The default reference: docs/results/index.md, the bf16 side-by-side table (2026-12-03), row
# "~30M | b": `instructray bench --config deploy/configs/bench-tiny-cpu.yaml` at tiny://policy-30m
# (30.6M parameters) in bf16 on a 2-core AMD EPYC, 32 prompts of 16 tokens x 1 sample x 32 new
# tokens, one engine, one rank. Advantages is not in the table: the results page puts the
# estimators' arithmetic at 1-3 ms.
MEASURED = {
    "generate": 0.76,
    "score": 1.19,
    "advantages": 0.002,
    "train": 2.92,
    "sync": 0.54,
}
MEASURED_SHAPE = StepShape(30.6e6, 32, 16, 32, 1, 1, 3)
MEASURED_SOURCE = (
    'docs/results/index.md, "bf16, side by side with TRL (2026-12-03)", row "~30M | b"'
)
PLAN_ENGINES = (2, 4, 8)


def params_from_name(name: str) -> float:
    """Parameters from a model name's size tag: 'Qwen2.5-7B' -> 7e9, 'policy-30m' -> 3e7."""
    tags = re.findall(r"(\d+(?:\.\d+)?)([bBmM])(?![a-zA-Z])", Path(name).name)
    if not tags:
        raise ValueError(f"model.policy {name!r} names no size (like 7B); pass --plan-params N")
    number, unit = tags[-1]
    return float(number) * (1e9 if unit in "bB" else 1e6)


def target_shape(cfg: Config, params: float, engines: int) -> StepShape:
    """The config's step on H100s: one GPU per engine (tp 1), rank, reference and reward actor."""
    r = cfg.rollout
    busiest = max(
        1 / cfg.reference.num_actors, 1 / cfg.reward.num_actors, 2 / cfg.learner.num_ranks
    )
    return StepShape(
        params,
        r.prompts_per_step * r.samples_per_prompt,
        cfg.data.max_prompt_tokens,  # the bench pins every prompt to this length
        r.max_new_tokens,
        engines,
        cfg.learner.num_ranks,
        busiest,  # the learner runs two: old log-probs and values
    )


def reference_from_run(path: str) -> tuple[dict[str, float], StepShape, str]:
    """Mean phase seconds after the warm-up step of a CPU bench run folder (or its
    metrics.jsonl), and its shape from the config.yaml beside it."""
    metrics = Path(path) / "metrics.jsonl" if Path(path).is_dir() else Path(path)
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    n = rows[0]["learner/policy_parameters"] if rows else 0  # logged by the first step alone
    rows = rows[1:] if len(rows) > 1 else rows
    missing = [p for p in PHASES if any(f"timing/{p}" not in row for row in rows)]
    if not rows or missing:
        raise ValueError(f"{metrics}: steps without timing/{', timing/'.join(missing or PHASES)}")
    measured = {p: statistics.fmean(row[f"timing/{p}"] for row in rows) for p in PHASES}
    cfg = yaml.safe_load((metrics.parent / "config.yaml").read_text())
    r = cfg["rollout"]
    shape = StepShape(
        n,
        r["prompts_per_step"] * r["samples_per_prompt"],
        cfg["data"]["max_prompt_tokens"],
        r["max_new_tokens"],
        r["num_engines"],
        cfg["learner"]["num_ranks"],
        3,  # all on one CPU: reference, reward, the learner's old log-probs
    )
    return measured, shape, f"{metrics} ({len(rows)} steps after the warm-up)"


def _sum(xs: list[float]) -> str:
    return " + ".join(f"{x:.1f}" for x in xs)


def _phase_lines(measured, ref, shapes, targets) -> list[str]:
    """Per phase: measured s, its CPU floor, the ratio, and per engine count H100 floor -> s."""
    ref_floor = floors(ref, CPU_2CORE)
    head = "".join(f"{f'{s.engines} eng: floor':>15}{'s':>7}" for s in shapes)
    lines = [f"{'phase':<11}{'measured s':>11}{'CPU floor':>10}{'x floor':>8}{head}"]
    for p in PHASES:
        row = f"{p:<11}{measured[p]:>11.3f}{ref_floor[p]:>10.4f}{measured[p] / ref_floor[p]:>8.2f}"
        cells = [
            f"{floors(s, H100)[p]:>15.3f}{t[p]:>7.1f}" for s, t in zip(shapes, targets, strict=True)
        ]
        lines.append(row + "".join(cells))
    return lines


def _arithmetic(shape: StepShape, plan: StepPlan) -> list[str]:
    """How one engine count's generate floor, step times and idle seconds come about."""
    ph, (prefill, step) = plan.phases, generate_floor(shape, H100)
    bound = (
        "compute" if step > BF16_BYTES * shape.params / H100.memory_bytes_per_s else "weight reads"
    )
    rest = [ph["score"], ph["advantages"], ph["train"]]
    idle = ", ".join(f"{role} {a:.1f} -> {b:.1f}" for role, (a, b) in plan.idle.items())
    return [
        f"{shape.engines} engines: generate floor = prefill {prefill:.2f} s + "
        f"{shape.new_tokens} decode steps x {1e3 * step:.2f} ms (bound by {bound})",
        f"  lockstep  = {_sum([ph[p] for p in PHASES])} = {plan.lockstep:.1f} s",
        f"  pipelined = max({ph['generate']:.1f}, {_sum(rest)}) + {ph['sync']:.1f} "
        f"= {plan.pipelined:.1f} s",
        f"  idle s/step, lockstep -> pipelined: {idle}",
    ]


def plan_report(cfg: Config, plan_from: str | None = None, params: float | None = None) -> str:
    """The table: phase seconds scaled to the config's shapes and lockstep against pipelined
    step time for PLAN_ENGINES engines, each with its arithmetic."""
    measured, ref, source = MEASURED, MEASURED_SHAPE, MEASURED_SOURCE
    if plan_from:
        measured, ref, source = reference_from_run(plan_from)
    n = params or params_from_name(cfg.model.policy)
    shapes = [target_shape(cfg, n, e) for e in PLAN_ENGINES]
    targets = [scale(measured, ref, CPU_2CORE, s, H100) for s in shapes]
    plans = [plan_step(t) for t in targets]
    s0, fixed = shapes[0], cfg.learner.num_ranks + cfg.reference.num_actors + cfg.reward.num_actors
    out = [
        f"plan: {cfg.model.policy} (N = {n:.3g}), {s0.sequences} sequences x "
        f"({s0.prompt_tokens} prompt + {s0.new_tokens} new) tokens per step, "
        f"{cfg.learner.num_ranks} learner ranks; one H100 per engine, rank and scorer actor",
        f"  H100: {H100_BF16_PEAK_FLOPS / 1e12:.0f} TFLOP/s x MFU {ASSUMED_MFU}, "
        f"{H100.memory_bytes_per_s / 1e12:.2f} TB/s HBM, {H100.link_bytes_per_s / 1e9:.0f} GB/s "
        "sync link",
        f"reference: {source}: N = {ref.params:.3g}, {ref.sequences} x ({ref.prompt_tokens} + "
        f"{ref.new_tokens}) tokens, 2-core CPU at {CPU_2CORE.flops / 1e9:.0f} GFLOP/s, "
        f"{CPU_2CORE.memory_bytes_per_s / 1e9:.0f} GB/s",
        "target s = measured s x H100 floor / CPU floor (orchestrator/ppo/plan.py)",
        "",
        *_phase_lines(measured, ref, shapes, targets),
        "",
        f"{'engines':>7}{'GPUs':>6}{'lockstep s':>12}{'pipelined s':>13}{'saved':>7}",
    ]
    for s, plan in zip(shapes, plans, strict=True):
        saved = 100 * (1 - plan.pipelined / plan.lockstep)
        out.append(
            f"{s.engines:>7}{s.engines + fixed:>6}{plan.lockstep:>12.1f}"
            f"{plan.pipelined:>13.1f}{saved:>6.0f}%"
        )
    for s, plan in zip(shapes, plans, strict=True):
        out += ["", *_arithmetic(s, plan)]
    return "\n".join(out)
