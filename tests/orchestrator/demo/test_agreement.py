"""The demo's labelers' agreement, measured through the labeling service (bots over HTTP), against
the same measure counted by hand in a loop over answer pairs."""

import itertools
import random

from instructray.orchestrator.demo import world as w
from instructray.orchestrator.demo.agreement import labelers_agreement


def tasks(n):
    rng = random.Random(3)
    prompts = [w.make_prompt(rng, "direct", "none") for _ in range(n)]
    return [p.text for p in prompts], [list(w.probe_answers(p).values()) for p in prompts]


def test_two_noiseless_labelers_agree_on_every_pair():
    prompts, sets = tasks(12)
    got = labelers_agreement(prompts, sets, w.Labeler(0, noise=0.0).rank)
    assert got == {"agreement": 1.0, "tasks": 12, "rankings": 24, "labelers": 2}


def test_the_world_labelers_agree_as_often_as_a_loop_over_their_pairs_says():
    prompts, sets = tasks(100)
    got = labelers_agreement(prompts, sets, w.Labeler(5).rank)["agreement"]
    a, b, same, pairs = w.Labeler(11), w.Labeler(12), 0, 0
    for prompt, answers in zip(prompts, sets, strict=True):
        at_a = {x: i for i, x in enumerate(a.rank(prompt, answers))}
        at_b = {x: i for i, x in enumerate(b.rank(prompt, answers))}
        for x, y in itertools.combinations(range(len(answers)), 2):
            pairs += 1
            same += (at_a[x] < at_a[y]) == (at_b[x] < at_b[y])
    assert pairs == 100 * 21
    assert 0.6 < got < 0.95 and abs(got - same / pairs) < 0.08, (got, same / pairs)
