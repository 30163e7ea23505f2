"""The weight-sync check's verdict on an engine's state, and the per-dtype log-prob limit."""

from __future__ import annotations

import torch

from instructray.actors.weight_sync import fingerprints_of
from instructray.orchestrator.config import load_config
from instructray.orchestrator.ppo.sync_check import (
    logprob_diff_stats,
    logprob_problem,
    sync_logprob_limits,
    sync_problem,
)

WEIGHTS = {"a.weight": torch.ones(2, 3), "b.bias": torch.arange(4.0)}
LEARNER = fingerprints_of(WEIGHTS.items())


def state(version, loaded):
    return {"version": version, "fingerprints": loaded, "logprobs": []}


def test_an_engine_holding_the_learners_weights_passes():
    assert sync_problem(state(3, [LEARNER, LEARNER]), LEARNER, 3) == ""
    assert sync_problem(state(0, None), LEARNER, 0) == ""  # the weights it started from


def test_another_version_or_nothing_loaded_fails():
    assert sync_problem(state(2, [LEARNER]), LEARNER, 3) == "holds version 2, not 3"
    assert sync_problem(state(3, None), LEARNER, 3) == "reports no weights loaded since it started"


def test_a_worker_with_other_weights_fails_naming_the_worker_and_tensors():
    stale = fingerprints_of({**WEIGHTS, "b.bias": torch.arange(4.0) + 1}.items())
    problem = sync_problem(state(3, [LEARNER, stale]), LEARNER, 3)
    assert problem == (
        "worker 1 loaded other weights than the learner holds: 1 of 2 tensors not the "
        "learner's (b.bias)"
    )


def test_logprob_limits_by_dtype_unless_set():
    assert sync_logprob_limits(load_config(None, ["--model.dtype=float32"])) == (1e-4, 1e-3)
    assert sync_logprob_limits(load_config(None, ["--model.dtype=bfloat16"])) == (0.05, 1.0)
    cfg = load_config(None, ["--model.dtype=bfloat16", "--rollout.sync_p99_logprob_diff=0.5"])
    assert sync_logprob_limits(cfg) == (0.05, 0.5)


def test_logprob_diff_stats_over_ragged_rows():
    # |diff| = [0, 0.25, 0.125]: mean 0.125, max 0.25; the p99 lies 0.98 of the way from the
    # 2nd to the 3rd order statistic (position 0.99 x (3 - 1) = 1.98): 0.125 + 0.98 x 0.125.
    stats = logprob_diff_stats([[-1.0, -2.0], [-0.5]], [[-1.0, -2.25], [-0.375]])
    assert stats == {"mean": 0.125, "p99": 0.125 + 0.98 * 0.125, "max": 0.25}
    assert stats["p99"] == 0.2475


def bf16_check(engine, learner):
    limits = sync_logprob_limits(load_config(None, ["--model.dtype=bfloat16"]))
    return logprob_problem(logprob_diff_stats(engine, learner), limits, "bfloat16")


def test_one_improbable_token_far_off_passes_in_bf16_but_a_broken_sync_does_not():
    learner = [[-1.0] * 500, [-2.0] * 500]
    rounding = [[-1.004] * 500, [-2.004] * 499 + [-5.0]]  # one token 3 nats off: max 3
    assert bf16_check(rounding, learner) == ""  # mean 0.007, p99 0.004
    broken = [[-1.3] * 500, [-2.3] * 500]  # every token 0.3 nats off: a stale or garbled tensor
    assert bf16_check(broken, learner) == (
        "differs from the learner by 0.3 in mean |log-prob| on the probe batch "
        "(limit rollout.sync_mean_logprob_diff = 0.05 for bfloat16; max 0.3)"
    )
    tail = [[-1.0] * 500, [-2.0] * 480 + [-4.0] * 20]  # 2% of the tokens 2 nats off: mean 0.04
    assert bf16_check(tail, learner).startswith("differs from the learner by 2 in p99")
    nan = [[float("nan")] + [-1.0] * 499, [-2.0] * 500]
    assert "in mean" in bf16_check(nan, learner)
