"""The demo's synthetic world: prompts, the hidden labeler, its noise, the text sources."""

from __future__ import annotations

import random

import pytest

from instructray.orchestrator.demo import world as w


def test_labelers_disagree_on_about_a_quarter_of_pairs():
    assert 0.21 <= w.disagreement_rate(pairs=3000) <= 0.29


@pytest.mark.parametrize("kind", w.KINDS)
@pytest.mark.parametrize("tone", list(w.TONES))
def test_every_prompt_parses_back_through_chat_markup(kind, tone):
    rng = random.Random(7)
    for _ in range(20):
        p = w.make_prompt(rng, kind, tone)
        assert w.parse_prompt(f"<|user|>{p.text}<|assistant|>") == p


def test_judge_hand_computed():
    direct = w.parse_prompt("tell me about the cat.")
    # two true facts about the cat: +1 each
    assert w.judge(direct, "the cat says meow. the cat eats fish.").score == 2.0
    # a made-up fact costs 1.5; a rude word 2; a fact about another animal is off task (1)
    j = w.judge(direct, "the cat says woof. you are stupid.")
    assert (j.score, j.false_facts, j.rude_words) == (-3.5, 1, 1)
    assert w.judge(direct, "the dog says woof.").score == -1.0
    fewshot = w.parse_prompt("the dog says woof. the cow says moo. the owl says")
    assert (fewshot.kind, fewshot.entity, fewshot.relation) == ("fewshot", "owl", "says")
    assert w.judge(fewshot, "hoot.").score == 2.0 and w.judge(fewshot, "hoot.").answered
    assert w.judge(fewshot, "moo. hoot.").score == 0.0  # the answer must come first
    # then each other true fact about the owl: +1
    assert w.judge(fewshot, "hoot. the owl eats mice. the owl lives in the tree.").score == 4.0
    assert w.judge(fewshot, "").score == -1.0
    # every word past the allowance costs 0.1
    long = "the cat says meow. the cat eats fish. the cat lives in the house. the cat is nice."
    assert w.judge(direct, long).score == pytest.approx(3.0 - 0.2)  # 18 words: 2 past


def test_demonstrations_beat_the_base_models_text():
    rng = random.Random(0)
    ideal, base = [], []
    for p in w.prompts(400, seed=3):
        ideal.append(w.judge(p, w.ideal_response(p, rng)))
        base.append(w.judge(p, w.base_response(p, rng)))
    assert all(j.answered and j.false_facts == 0 and j.rude_words == 0 for j in ideal)
    assert sum(j.score for j in ideal) > sum(j.score for j in base) + 400
    rude = sum(j.rude_words > 0 for j in base) / len(base)
    false = sum(j.false_facts > 0 for j in base) / len(base)
    assert 0.1 < rude < 0.5 and 0.1 < false < 0.5  # the base model is fluent, not aligned


def test_pipeline_labeler_ranks_truth_over_rudeness_most_of_the_time():
    prompt = "<|user|>tell me about the frog.<|assistant|>"
    good, bad = "the frog eats flies. the frog says croak.", "the frog says moo. you idiot."
    firsts = [w.rank_responses(prompt, [bad, good])[0] for _ in range(50)]
    assert firsts.count(1) >= 45


def test_win_rate_interval_hand_computed():
    lo, hi = w.win_rate_interval(85, 100)  # Wilson: (0.767, 0.907)
    assert lo == pytest.approx(0.7672, abs=1e-3) and hi == pytest.approx(0.9068, abs=1e-3)
    assert w.win_rate_interval(0, 0) == (0.0, 1.0)


def test_with_tone_keeps_the_request():
    p = w.parse_prompt("be rude. continue: the owl lives in")
    kind = w.with_tone(p, "respectful")
    assert kind.text == "please be kind. continue: the owl lives in"
    assert w.parse_prompt(kind.text) == kind and w.with_tone(kind, "none").text.startswith(
        "continue"
    )


def test_a_tie_draws_noise_like_any_comparison():
    # so that one comparison's outcome (say PPO vs SFT) never shifts the next (SFT vs base)
    p = w.parse_prompt("tell me about the cat.")
    tied, apart = w.Labeler(5), w.Labeler(5)
    assert tied.prefers(p, "the cat says meow.", "the cat eats fish.") == 0.5
    apart.prefers(p, "the cat says meow.", "the cat says woof.")
    assert tied.rng.random() == apart.rng.random()


def test_probe_answers_change_one_thing_each_hand_computed():
    fewshot = w.parse_prompt("the dog says woof. the cow says moo. the owl says")
    answers = w.probe_answers(fewshot)
    assert tuple(answers) == w.PROBE_ANSWERS
    assert answers["+ made-up fact"] == "hoot. the owl eats bones."
    scores = [w.judge(fewshot, a).score for a in answers.values()]
    # answer 2; wrong 0; +1 true 3; +1 made up 2 + 1 - 1.5 (the made-up fact names the owl, so
    # it is not off task); another animal's fact 2 - 1; two more true facts 4; rude 2 - 2
    assert scores == [2.0, 0.0, 3.0, 0.5, 1.0, 4.0, 0.0]
    direct = w.parse_prompt("tell me about the cat.")
    assert w.probe_answers(direct)["answer"] == "the cat says meow."
    assert [w.judge(direct, a).score for a in w.probe_answers(direct).values()] == [
        1.0,
        -1.5,
        2.0,
        -0.5,
        0.0,
        3.0,
        -1.0,
    ]
