"""Reward functions and labelers that misbehave on purpose, importable by Ray workers in tests
(the session's Ray puts this folder on PYTHONPATH).

`boom`, `wrong_shape` and `hang` misbehave only on batches of more than one sample: the
pre-flight check calls a reward function once on one sample, so their faults are the run's.
The others misbehave at once, for the pre-flight's own tests."""

from __future__ import annotations

import time


def boom(prompts, responses):
    if len(responses) > 1:
        raise KeyError("the labeler is out to lunch")
    return [0.0]


def wrong_shape(prompts, responses):
    return [0.0] * (len(responses) + (len(responses) > 1))


def hang(prompts, responses):
    if len(responses) > 1:
        time.sleep(3600)
    return [0.0] * len(responses)


def broken(prompts, responses):
    raise KeyError("the labeler is out to lunch")


def words(prompts, responses):
    return ["good" for _ in responses]


def sleeps(prompts, responses):
    time.sleep(3600)


NOT_A_FUNCTION = 3


def ranks_twice(prompt, responses):
    return [0] * len(responses)
