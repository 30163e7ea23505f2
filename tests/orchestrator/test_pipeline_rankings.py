"""How the pipeline pools several models' samples of one prompt before the labeler ranks them."""

from __future__ import annotations

from instructray.orchestrator.sampler import pool_responses


def test_models_take_turns_and_repeats_and_empties_drop():
    policy, base = ["a", "b", "", "c"], ["d", "a", "e"]
    assert pool_responses([policy, base]) == ["a", "d", "b", "e", "c"]


def test_one_model_keeps_its_order():
    assert pool_responses([["x", "y", "x", "z"]]) == ["x", "y", "z"]
