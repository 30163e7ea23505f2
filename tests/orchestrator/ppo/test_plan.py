"""The step-time cost model (orchestrator/ppo/plan.py): hand-computed floors, scaling and step
times, and its properties."""

from __future__ import annotations

import itertools

import pytest

from instructray.orchestrator.ppo.plan import (
    CPU_2CORE,
    H100,
    PHASES,
    Hardware,
    StepShape,
    floors,
    plan_step,
    scale,
)

# Made-up round numbers: 1,000 FLOP/s, 100 bytes/s of memory, 10 bytes/s of sync link.
HW = Hardware(flops=1e3, memory_bytes_per_s=100, link_bytes_per_s=10)
# N = 10, 4 sequences x (3 prompt + 2 new) tokens = 20 tokens, 2 engines, 2 ranks, 1.5 scoring
# forwards on the busiest scoring device.
SHAPE = StepShape(10, 4, 3, 2, 2, 2, 1.5)


def test_floors_by_hand():
    # generate, per engine 4 / 2 = 2 rows: prefill 2 N x 2 rows x 3 tokens / 1e3 = 0.12 s; a
    # decode step max(compute 2 N x 2 / 1e3 = 0.04, weights 2 bytes x N / 100 = 0.2) = 0.2 s;
    # 0.12 + 2 steps x 0.2 = 0.52 s.
    # score 1.5 x 2 N x 20 / 1e3 = 0.6; advantages 4 x 2 tokens / 1e6 tokens/s = 8e-6;
    # train 6 N x 20 / (2 ranks x 1e3) = 0.6; sync 2 bytes x N / 10 = 2.0.
    expected = {"generate": 0.52, "score": 0.6, "advantages": 8e-6, "train": 0.6, "sync": 2.0}
    assert floors(SHAPE, HW) == pytest.approx(expected, rel=1e-12)


def test_scale_by_hand():
    # Measured: 2x, 2x, 2x, 3x and 1.5x the floors above.
    measured = {"generate": 1.04, "score": 1.2, "advantages": 1.6e-5, "train": 1.8, "sync": 3.0}
    # Twice the parameters on 4 engines, on hardware with 2x the FLOP/s and 4x the bandwidths.
    target = StepShape(20, 4, 3, 2, 4, 2, 1.5)
    fast = Hardware(flops=2e3, memory_bytes_per_s=400, link_bytes_per_s=40)
    # generate floor, 1 row per engine: prefill 2 x 20 x 1 x 3 / 2e3 = 0.06; decode step
    # max(2 x 20 x 1 / 2e3 = 0.02, 2 x 20 / 400 = 0.1) = 0.1; 0.06 + 2 x 0.1 = 0.26,
    # so 1.04 x 0.26 / 0.52 = 0.52.
    # score floor 1.5 x 2 x 20 x 20 / 2e3 = 0.6: 1.2 x 0.6 / 0.6 = 1.2.
    # advantages: the same tokens, 1.6e-5. train 6 x 20 x 20 / (2 x 2e3) = 0.6: 1.8.
    # sync 2 x 20 / 40 = 1.0: 3.0 x 1.0 / 2.0 = 1.5.
    expected = {"generate": 0.52, "score": 1.2, "advantages": 1.6e-5, "train": 1.8, "sync": 1.5}
    assert scale(measured, SHAPE, HW, target, fast) == pytest.approx(expected, rel=1e-12)


def test_step_times_and_idle_by_hand():
    phases = {"generate": 6.0, "score": 1.0, "advantages": 0.5, "train": 2.5, "sync": 1.0}
    plan = plan_step(phases)
    # lockstep 6 + 1 + 0.5 + 2.5 + 1 = 11; pipelined max(6, 1 + 0.5 + 2.5 = 4) + 1 = 7.
    assert (plan.lockstep, plan.pipelined) == (11.0, 7.0)
    # Busy: engines generate + sync = 7, scorers score = 1, learner train + sync = 3.5.
    # Idle lockstep: 11 - 7 = 4, 11 - 1 = 10, 11 - 3.5 = 7.5; pipelined: 0, 6, 3.5.
    assert plan.idle == {"engines": (4.0, 0.0), "scorers": (10.0, 6.0), "learner": (7.5, 3.5)}


GRID = [
    dict(zip(PHASES, values, strict=True))
    for values in itertools.product((0.0, 0.3, 2.0), (0.0, 1.5), (0.0, 0.01), (0.0, 4.0), (0.2,))
]


@pytest.mark.parametrize("phases", GRID)
def test_pipelined_never_slower_and_gains_at_most_any_roles_idle_time(phases):
    plan = plan_step(phases)
    assert plan.pipelined <= plan.lockstep
    gain = plan.lockstep - plan.pipelined
    # Overlap can only hide time some role sat idle in lockstep.
    assert all(gain <= lockstep_idle + 1e-12 for lockstep_idle, _ in plan.idle.values())
    assert all(idle >= 0 for pair in plan.idle.values() for idle in pair)


def test_one_engine_with_a_free_learner_gains_nothing():
    # Scoring and training cost nothing: the engine is idle for 0 s in lockstep, so there is
    # nothing to hide.
    target = StepShape(7e9, 512, 1024, 512, 1, 4, 1)
    measured = {"generate": 0.76, "score": 0.0, "advantages": 0.0, "train": 0.0, "sync": 0.54}
    reference = StepShape(30.6e6, 32, 16, 32, 1, 1, 3)
    plan = plan_step(scale(measured, reference, CPU_2CORE, target, H100))
    assert plan.idle["engines"][0] == 0.0
    assert plan.pipelined == plan.lockstep


def test_more_engines_shrink_generate_down_to_the_weight_reads():
    reference = StepShape(30.6e6, 32, 16, 32, 1, 1, 3)
    measured = {"generate": 0.76, "score": 1.19, "advantages": 0.002, "train": 2.92, "sync": 0.54}
    runs = {
        e: scale(measured, reference, CPU_2CORE, StepShape(7e9, 512, 1024, 512, e, 4, 1), H100)
        for e in (1, 2, 4, 8, 64)
    }
    generate = [runs[e]["generate"] for e in (1, 2, 4, 8, 64)]
    assert generate == sorted(generate, reverse=True) and len(set(generate)) == len(generate)
    # The other phases do not depend on the engines.
    assert all(runs[e]["train"] == runs[1]["train"] for e in runs)
    # Past the compute bound each engine still reads 2 x 7e9 bytes per decode step, 512 steps.
    weights_floor = 512 * 2 * 7e9 / H100.memory_bytes_per_s
    ratio = measured["generate"] / floors(reference, CPU_2CORE)["generate"]
    assert runs[64]["generate"] > ratio * weights_floor
    assert runs[64]["generate"] - ratio * weights_floor < 0.1 * runs[64]["generate"]
