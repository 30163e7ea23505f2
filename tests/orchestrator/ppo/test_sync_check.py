"""The weight-sync check's verdict on an engine's state, and the per-dtype log-prob limit."""

from __future__ import annotations

import torch

from instructray.actors.weight_sync import fingerprints_of
from instructray.orchestrator.config import load_config
from instructray.orchestrator.ppo.sync_check import (
    max_logprob_diff,
    sync_logprob_limit,
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


def test_logprob_limit_by_dtype_unless_set():
    assert sync_logprob_limit(load_config(None, ["--model.dtype=float32"])) == 1e-3
    assert sync_logprob_limit(load_config(None, ["--model.dtype=bfloat16"])) == 1.0
    cfg = load_config(None, ["--model.dtype=bfloat16", "--rollout.sync_max_logprob_diff=0.5"])
    assert sync_logprob_limit(cfg) == 0.5


def test_max_logprob_diff_over_ragged_rows():
    assert max_logprob_diff([[-1.0, -2.0], [-0.5]], [[-1.0, -2.25], [-0.375]]) == 0.25
