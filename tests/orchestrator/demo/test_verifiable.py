"""The demo's verifiable task: right answers, the exact-match reward, quiz prompts, and the RL
stage's config (no Ray: the whole run is measured in docs/results/index.md, not tested)."""

from __future__ import annotations

import random
import re

import pytest

from instructray.orchestrator.demo import world as w

FEWSHOT = "the dog says woof. the duck says quack. the cow says"
CAT_HOME = "continue: the cat lives in"


def test_answer_of_gives_the_one_right_value_and_none_for_direct_prompts():
    assert w.answer_of(FEWSHOT) == "moo"
    assert w.answer_of(CAT_HOME) == "the house"
    assert w.answer_of("be rude. continue: the owl eats") == "mice"
    assert w.answer_of("tell me about the cat.") is None
    with pytest.raises(ValueError, match="not a prompt of the demo world"):
        w.answer_of("what is the capital of france?")


@pytest.mark.parametrize(
    "prompt",
    [  # as the reward actor receives them: formatted by the chat template or sft.template
        FEWSHOT,
        f"<|user|>{FEWSHOT}<|assistant|>",
        f"{FEWSHOT}\n",
        f"please be kind. {FEWSHOT}",
    ],
)
def test_exact_match_reads_prompts_with_markup_and_templates(prompt):
    assert w.exact_match([prompt, prompt], ["moo.", "woof."]) == [1.0, 0.0]


@pytest.mark.parametrize(
    "response, score",
    [
        ("moo.", 1.0),  # right
        ("baa.", 0.0),  # wrong
        ("moo. the cow eats grass. the cow lives in the barn.", 1.0),  # answer, then more facts
        (" moo. the cow eats fish.", 1.0),  # what follows the answer is not judged
        ("", 0.0),  # empty
        ("Moo!", 1.0),  # case and punctuation
        ('"moo"', 1.0),
        ("moo", 1.0),  # cut off before its full stop
        ("moo, moo.", 1.0),  # a comma ends the first answer too
        ("moo moo.", 0.0),  # the first answer must be the value, nothing more
        ("the cow says moo.", 0.0),
        ("woof. moo.", 0.0),  # the right value second is too late
        (". moo.", 0.0),  # an empty first answer
    ],
)
def test_exact_match_judges_the_first_answer(response, score):
    assert w.exact_match([FEWSHOT], [response]) == [score]


def test_exact_match_multi_word_values():
    prompts = [CAT_HOME] * 5
    responses = [
        "the house.",
        "The  House!",
        "the house. the cat eats fish.",
        "house.",
        "the barn.",
    ]
    assert w.exact_match(prompts, responses) == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_exact_match_refuses_direct_prompts_and_uneven_lists():
    named = "'<|user|>tell me about the cat.<|assistant|>' is a direct prompt"  # as given
    with pytest.raises(ValueError, match=re.escape(named)):
        w.exact_match([FEWSHOT, "<|user|>tell me about the cat.<|assistant|>"], ["moo.", "x"])
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        w.exact_match([FEWSHOT, FEWSHOT], ["moo."])


def test_first_answer():
    assert w.first_answer(" The  House! the cat eats fish.") == "the house"
    assert w.first_answer("moo\nthe cow eats grass.") == "moo"
    assert w.first_answer("") == ""


def test_quiz_prompts_are_seeded_answerable_and_of_both_kinds():
    quiz = w.quiz_prompts(200, seed=3)
    assert quiz == w.quiz_prompts(200, seed=3)
    assert quiz != w.quiz_prompts(200, seed=4)
    assert {p.kind for p in quiz} == set(w.QUIZ_KINDS)
    assert {p.tone for p in quiz} == set(w.TONES)  # drawn as users draw them
    for p in quiz:
        assert w.parse_prompt(p.text) == p
        assert w.answer_of(p.text) == w.FACTS[p.entity][p.relation]
    # the labeler's own answers to quiz prompts are right, with or without more facts
    rng = random.Random(0)
    ideal = [w.ideal_response(p, rng) for p in quiz]
    assert w.exact_match([p.text for p in quiz], ideal) == [1.0] * len(quiz)
    assert {p.tone for p in w.quiz_prompts(50, seed=3, tone="none")} == {"none"}


def test_the_rl_stage_trains_the_sft_model_against_exact_match(tmp_path):
    from pathlib import Path

    from instructray.orchestrator.config import load_config, validate_config
    from instructray.orchestrator.demo.verifiable import REWARD, grpo_stage_config, rl_name

    config = Path(__file__).parents[3] / "deploy/configs/grpo-tiny-cpu.yaml"
    cfg = validate_config(load_config(config, [f"--run.output_dir={tmp_path}"]), "demo")
    assert cfg.demo.task == "verifiable" and cfg.ppo.estimator == "grpo"
    cfg.model.reward = "/models/rm"  # a reward model left in the config is dropped
    stage = grpo_stage_config(cfg, "/runs/sft/final", "/runs/data/prompts.jsonl")
    validate_config(stage, "ppo")
    assert stage.reward.function == REWARD
    assert stage.model.reward == "" and not stage.reward.normalize
    assert stage.model.policy == stage.model.reference == stage.model.tokenizer == "/runs/sft/final"
    assert stage.data.prompts == "/runs/data/prompts.jsonl"
    assert stage.ppo.estimator == "grpo" and stage.run.output_dir == str(tmp_path / "grpo")
    assert cfg.model.policy == "tiny://world" and cfg.run.output_dir == str(tmp_path)  # a copy
    rloo = load_config(config, ["--ppo.estimator=rloo"])
    assert rl_name(rloo) == "rloo" and grpo_stage_config(rloo, "s", "p").ppo.estimator == "rloo"
    assert rl_name(load_config(config, ["--ppo.estimator=gae"])) == "ppo"


def test_the_report_tables_accuracy_and_the_training_curve(tmp_path):
    import json

    from instructray.orchestrator.demo.verifiable import table, training_curve, write_report

    rows = [{"step": i, "reward/mean": 0.5 if i < 20 else 0.9, "kl/mean": 0.1} for i in range(40)]
    curve = training_curve(rows)
    assert curve == {
        "steps": 40,
        "window": 20,
        "reward_first": 0.5,
        "reward_last": 0.9,
        "kl_last": pytest.approx(0.1),
    }
    assert training_curve(rows[:6])["window"] == 3 and training_curve([]) == {}
    kinds = {k: {"greedy": 0.5, "sampled": None} for k in w.QUIZ_KINDS}
    acc = {"greedy": 0.5, "sampled": 0.25, "words": 3.0, "by_kind": kinds}
    ev = {
        "num_prompts": 4,
        "temperature": 1.0,
        "samples_per_prompt": 8,
        "accuracy": {"base": acc, "sft": acc, "grpo": acc},
        "rl_label": "grpo",
        "training": curve,
        "samples": [
            {"prompt": FEWSHOT, "answer": "moo", "base": "", "sft": "moo.", "grpo": "moo."}
        ],
    }
    lines = table(ev).splitlines()
    assert lines[0] == "| exact-match accuracy, 4 held-out questions | base | SFT | GRPO |"
    assert "| sampled (temperature 1, 8 per question) | 0.250 | 0.250 | 0.250 |" in lines
    assert "| fewshot, sampled | - | - | - |" in lines
    write_report(tmp_path, ev)
    assert "samples" not in json.loads((tmp_path / "eval.json").read_text())
    assert json.loads((tmp_path / "samples.jsonl").read_text())["sft"] == "moo."
    report = (tmp_path / "report.md").read_text()
    assert "0.500 over the first 20 steps, 0.900 over the last 20 of 40" in report
