"""Reward functions that misbehave on purpose, importable by Ray workers in tests (the session's
Ray puts this folder on PYTHONPATH)."""

from __future__ import annotations

import time


def boom(prompts, responses):
    raise KeyError("the labeler is out to lunch")


def wrong_shape(prompts, responses):
    return [0.0] * (len(responses) + 1)


def hang(prompts, responses):
    time.sleep(3600)
    return [0.0] * len(responses)
