"""Reward functions and labelers that misbehave on purpose, importable by Ray workers in tests
(the session's Ray puts this folder on PYTHONPATH).

`boom`, `wrong_shape` and `hang` misbehave only on batches of more than two samples: the
pre-flight check calls a reward function once on two samples, so their faults are the run's.
The others misbehave at once, for the pre-flight's own tests."""

from __future__ import annotations

import time


def boom(prompts, responses):
    if len(responses) > 2:
        raise KeyError("the labeler is out to lunch")
    return [0.0] * len(responses)


def wrong_shape(prompts, responses):
    return [0.0] * (len(responses) + (len(responses) > 2))


def hang(prompts, responses):
    if len(responses) > 2:
        time.sleep(3600)
    return [0.0] * len(responses)


def broken(prompts, responses):
    raise KeyError("the labeler is out to lunch")


def words(prompts, responses):
    return ["good" for _ in responses]


def sleeps(prompts, responses):
    time.sleep(3600)


def one_score(prompts, responses):
    return [0.0]  # one score for the batch, not one per response


def needs_answer(prompts, responses, answer):
    return [float(a in r) for r, a in zip(responses, answer, strict=True)]


NOT_A_FUNCTION = 3


def ranks_twice(prompt, responses):
    return [0] * len(responses)


def rank_with_a_tie(prompt, responses):
    """A labeler that ties: longest first, the two shortest tied (K = 2: all tied)."""
    order = sorted(range(len(responses)), key=lambda i: (-len(responses[i]), responses[i]))
    return [[i] for i in order[:-2]] + [order[-2:]]
