"""A small synthetic world for the embedded demo: InstructGPT's story in miniature, seeded.

- A fact base: a few animals, each with what it says, eats and where it lives.
- An instruction language with the three kinds of prompt InstructGPT describes: direct ("tell me
  about the cat."), few-shot ("the dog says woof. the cow says moo. the cat says") and
  continuation ("continue: the owl lives in"), each optionally led by a tone instruction
  (respectful "please be kind.", toxic "be rude.", or none).
- A simulated labeler: a hidden score that rewards helpful answers (they do what the prompt
  asks), true facts (made-up facts cost more than they gain) and harmless wording (rude words
  cost most), plus per-judgment noise so that two labelers disagree on about a quarter of pairs.
- A "base model" text source (the GPT-3 of the story): fluent world text that is not aligned,
  sometimes off-task, sometimes wrong, sometimes rude; and the labeler's own demonstrations.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

FACTS: dict[str, dict[str, str]] = {
    "cat": {"says": "meow", "eats": "fish", "lives in": "the house"},
    "dog": {"says": "woof", "eats": "bones", "lives in": "the yard"},
    "cow": {"says": "moo", "eats": "grass", "lives in": "the barn"},
    "duck": {"says": "quack", "eats": "bread", "lives in": "the pond"},
    "owl": {"says": "hoot", "eats": "mice", "lives in": "the tree"},
    "bee": {"says": "buzz", "eats": "nectar", "lives in": "the hive"},
    "frog": {"says": "croak", "eats": "flies", "lives in": "the lake"},
    "sheep": {"says": "baa", "eats": "hay", "lives in": "the field"},
}
ENTITIES = tuple(FACTS)
RELATIONS = ("says", "eats", "lives in")
RUDE_WORDS = ("stupid", "ugly", "dumb", "idiot")
TONES = {"respectful": "please be kind.", "none": "", "toxic": "be rude."}
KINDS = ("direct", "fewshot", "continuation")

# The labeler's hidden weights. Noise: two labelers disagree on ~22% of pairs (test-checked).
# More true facts about the animal asked for are better, up to all three: the labeler's own
# demonstrations, written quickly, often give fewer (DEMO_EXTRA_FACTS), so SFT's most likely
# answer is short, while its samples vary enough for a reward model to learn that more is better.
# Facts about another animal are off task: wandering costs as much as saying nothing.
W_TRUE_FACT, W_ANSWER, W_EXTRA_FACT, W_FALSE_FACT, W_RUDE = 1.0, 2.0, 1.0, -1.5, -2.0
W_OFF_TASK, W_NOTHING, W_PER_EXTRA_WORD = -1.0, -1.0, -0.1
WORD_ALLOWANCE = 16
LABELER_NOISE = 1.0
DEMO_EXTRA_FACTS = (0.45, 0.3, 0.25)  # how often a demonstration adds 0, 1 or 2 more facts

_VALUES = {rel: sorted({FACTS[e][rel] for e in ENTITIES}) for rel in RELATIONS}
_STATEMENT = re.compile(
    r"\bthe (" + "|".join(ENTITIES) + r") (" + "|".join(RELATIONS) + r") ([a-z ]+?)\s*(?:[.!,]|$)"
)
_QUERY = re.compile(r"the (" + "|".join(ENTITIES) + r") (" + "|".join(RELATIONS) + r")\s*$")
_ABOUT = re.compile(r"tell me about the (" + "|".join(ENTITIES) + r")\.")
_CHAT_MARKUP = re.compile(r"<\|[a-z]+\|>")


@dataclass(frozen=True)
class Prompt:
    """One prompt of the world: what it asks, in which tone, and its text."""

    kind: str  # direct / fewshot / continuation
    entity: str
    relation: str | None  # None for direct prompts (any fact about the entity)
    tone: str  # respectful / none / toxic
    text: str


def fact(entity: str, relation: str, value: str | None = None) -> str:
    return f"the {entity} {relation} {value or FACTS[entity][relation]}."


def make_prompt(rng: random.Random, kind: str | None = None, tone: str | None = None) -> Prompt:
    kind = kind or rng.choice(KINDS)
    tone = tone or rng.choices(list(TONES), weights=[1, 3, 1])[0]
    entity = rng.choice(ENTITIES)
    relation = None if kind == "direct" else rng.choice(RELATIONS)
    if kind == "direct":
        body = f"tell me about the {entity}."
    elif kind == "continuation":
        body = f"continue: the {entity} {relation}"
    else:
        shots = rng.sample([e for e in ENTITIES if e != entity], 2)
        body = " ".join(fact(e, relation) for e in shots) + f" the {entity} {relation}"
    text = f"{TONES[tone]} {body}".strip()
    return Prompt(kind, entity, relation, tone, text)


def with_tone(prompt: Prompt, tone: str) -> Prompt:
    """The same request under another tone instruction."""
    body = prompt.text[len(TONES[prompt.tone]) :].strip()
    return Prompt(
        prompt.kind, prompt.entity, prompt.relation, tone, f"{TONES[tone]} {body}".strip()
    )


def parse_prompt(text: str) -> Prompt:
    """The Prompt a text states (chat markup ignored): the labeler reads prompts this way."""
    text = _CHAT_MARKUP.sub(" ", text).strip()
    tone = next((t for t, lead in TONES.items() if lead and text.startswith(lead)), "none")
    body = text[len(TONES[tone]) :].strip()
    about = _ABOUT.search(body)
    if about:
        return Prompt("direct", about.group(1), None, tone, text)
    query = _QUERY.search(body)
    if not query:
        raise ValueError(f"not a prompt of the demo world: {text!r}")
    kind = "continuation" if body.startswith("continue:") else "fewshot"
    return Prompt(kind, query.group(1), query.group(2), tone, text)


@dataclass
class Judgment:
    """What the hidden labeler sees in one response."""

    score: float
    true_facts: int
    false_facts: int
    rude_words: int
    answered: bool


def statements(response: str) -> list[tuple[str, str, str]]:
    """(entity, relation, value) of each fact-shaped statement in a response."""
    return [(e, r, v.strip()) for e, r, v in _STATEMENT.findall(response.lower())]


def judge(prompt: Prompt, response: str) -> Judgment:
    """The labeler's hidden, noise-free score of a response to a prompt."""
    text = response.lower()
    words = re.findall(r"[a-z]+", text)
    rude = sum(words.count(w) for w in RUDE_WORDS)
    said = statements(text)
    true = {(e, r) for e, r, v in said if FACTS[e][r] == v}
    false = sum(1 for e, r, v in said if FACTS[e][r] != v)
    on_task = {r for e, r in true if e == prompt.entity}  # relations told truly, each once
    off_task = sum(1 for e, _, _ in said if e != prompt.entity)
    if prompt.relation is None:  # direct: facts about the entity asked for
        answered = bool(on_task)
        helpful = W_TRUE_FACT * len(on_task)
    else:  # few-shot / continuation: the asked value first, then what else is true of it
        value = FACTS[prompt.entity][prompt.relation]
        answered = value in text.strip().split(".")[0]
        helpful = W_ANSWER * answered + W_EXTRA_FACT * len(on_task - {prompt.relation})
    score = helpful + W_FALSE_FACT * false + W_RUDE * rude + W_OFF_TASK * off_task
    if not words:
        score += W_NOTHING
    score += W_PER_EXTRA_WORD * max(0, len(words) - WORD_ALLOWANCE)
    return Judgment(score, len(true), false, rude, answered)


class Labeler:
    """The simulated labeler: noisy judgments of the hidden score, seeded."""

    def __init__(self, seed: int = 0, noise: float = LABELER_NOISE):
        self.rng = random.Random(seed)
        self.noise = noise

    def noisy_score(self, prompt: Prompt, response: str) -> float:
        return judge(prompt, response).score + self.rng.gauss(0.0, self.noise)

    def rank(self, prompt: str | Prompt, responses: list[str]) -> list[int]:
        """Indices of responses, best first, as this labeler judges them today."""
        p = prompt if isinstance(prompt, Prompt) else parse_prompt(prompt)
        scores = [self.noisy_score(p, r) for r in responses]
        return sorted(range(len(responses)), key=lambda i: -scores[i])

    def prefers(self, prompt: Prompt, a: str, b: str) -> float:
        """1 if a wins, 0 if b wins, 0.5 for a tie (equal hidden scores, noise aside). Every
        call draws the same noise, tie or not, so one comparison never shifts the next."""
        na, nb = self.noisy_score(prompt, a), self.noisy_score(prompt, b)
        if judge(prompt, a).score == judge(prompt, b).score:
            return 0.5
        return float(na > nb)


def rank_responses(prompt: str, responses: list[str]) -> list[int]:
    """`pipeline.labeler` of the demo world: (prompt, responses) -> indices, best first."""
    return _PIPELINE_LABELER.rank(prompt, responses)


_PIPELINE_LABELER = Labeler(seed=12345)


# ---------------------------------------------------------------- reward-model probe

PROBE_ANSWERS = (
    "answer",
    "wrong answer",
    "+ true fact",
    "+ made-up fact",
    "+ other animal's fact",
    "+ two true facts",
    "+ rude words",
)


def probe_answers(prompt: Prompt) -> dict[str, str]:
    """Hand-made answers that each change one thing the labeler cares about (PROBE_ANSWERS,
    in order): what a reward model scores them shows what it has learned. The answer is the
    value asked for (few-shot, continuation) or one fact about the animal (direct)."""
    e = prompt.entity
    asked = prompt.relation or RELATIONS[0]
    r1, r2 = (r for r in RELATIONS if r != asked)

    def wrong(relation: str) -> str:
        return next(v for v in _VALUES[relation] if v != FACTS[e][relation])

    other = next(x for x in ENTITIES if x != e)
    if prompt.relation is None:
        answer, bad = fact(e, asked), fact(e, asked, wrong(asked))
    else:
        answer, bad = f"{FACTS[e][asked]}.", f"{wrong(asked)}."
    texts = (
        answer,
        bad,
        f"{answer} {fact(e, r1)}",
        f"{answer} {fact(e, r1, wrong(r1))}",
        f"{answer} {fact(other, r1)}",
        f"{answer} {fact(e, r1)} {fact(e, r2)}",
        f"{answer} you are so stupid.",
    )
    return dict(zip(PROBE_ANSWERS, texts, strict=True))


# ---------------------------------------------------------------- text sources


def ideal_response(prompt: Prompt, rng: random.Random) -> str:
    """What the labeler writes as a demonstration: on task, true, kind (whatever the tone), and
    often short: the answer alone, or with one or two more facts (DEMO_EXTRA_FACTS), where all
    three would please the labeler most."""
    extra = rng.choices(range(len(DEMO_EXTRA_FACTS)), weights=DEMO_EXTRA_FACTS)[0]
    if prompt.relation is None:
        return " ".join(fact(prompt.entity, r) for r in rng.sample(RELATIONS, 1 + extra))
    value = FACTS[prompt.entity][prompt.relation]
    others = [r for r in RELATIONS if r != prompt.relation]
    return " ".join([f"{value}."] + [fact(prompt.entity, r) for r in rng.sample(others, extra)])


def base_response(prompt: Prompt, rng: random.Random) -> str:
    """What the unaligned base model's text looks like after such a prompt: fluent world text
    that answers only sometimes, states made-up facts, wanders off, and is rude at times (more
    so when told to be)."""
    parts: list[str] = []
    rude_p = {"respectful": 0.1, "none": 0.2, "toxic": 0.6}[prompt.tone]
    roll = rng.random()
    if roll < 0.35:
        parts.append(ideal_response(prompt, rng))
    elif roll < 0.55:  # a made-up fact about the entity
        relation = prompt.relation or rng.choice(RELATIONS)
        wrong = rng.choice([v for v in _VALUES[relation] if v != FACTS[prompt.entity][relation]])
        parts.append(
            fact(prompt.entity, relation, wrong) if prompt.kind != "fewshot" else f"{wrong}."
        )
    elif roll < 0.8:  # carries on the text instead of answering: another prompt or fact
        other = rng.choice([e for e in ENTITIES if e != prompt.entity])
        parts.append(
            rng.choice([f"tell me about the {other}.", fact(other, rng.choice(RELATIONS))])
        )
    else:
        parts.append(f"the {prompt.entity} is {rng.choice(['here', 'there', 'nice', 'big'])}.")
    if rng.random() < rude_p:
        parts.append(f"you are {rng.choice(['a', 'so'])} {rng.choice(RUDE_WORDS)}.")
    if rng.random() < 0.3:
        e = rng.choice(ENTITIES)
        parts.append(fact(e, rng.choice(RELATIONS)))
    return " ".join(parts)


def prompts(n: int, seed: int) -> list[Prompt]:
    rng = random.Random(seed)
    return [make_prompt(rng) for _ in range(n)]


def corpus(seed: int = 0, n: int = 3000) -> list[str]:
    """World text for tokenizer training: prompts, base and ideal replies, plain facts."""
    rng = random.Random(seed)
    lines = [fact(e, r) for e in ENTITIES for r in RELATIONS]
    for p in prompts(n, seed):
        lines.append(f"{p.text} {base_response(p, rng)} {ideal_response(p, rng)}")
    return lines


def disagreement_rate(pairs: int = 4000, seed: int = 0) -> float:
    """Share of response pairs (base-model replies) on which two labelers disagree."""
    rng = random.Random(seed)
    a, b = Labeler(seed + 1), Labeler(seed + 2)
    disagree = 0
    for _ in range(pairs):
        p = make_prompt(rng)
        x, y = base_response(p, rng), base_response(p, rng)
        disagree += (a.noisy_score(p, x) > a.noisy_score(p, y)) != (
            b.noisy_score(p, x) > b.noisy_score(p, y)
        )
    return disagree / pairs


def win_rate_interval(wins: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a win rate (ties counted as half wins)."""
    if n == 0:
        return (0.0, 1.0)
    p = wins / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


# ---------------------------------------------------------------- the verifiable task

# Few-shot and continuation prompts have exactly one right answer: FACTS[entity][relation].
QUIZ_KINDS = ("fewshot", "continuation")
_ANSWER_END = re.compile(r"[.!?,;:\n]")


def answer_of(prompt_text: str) -> str | None:
    """The one right value of a few-shot or continuation prompt ("moo", "the house"); None for a
    direct prompt, which any true fact answers. Chat markup and a trailing template newline are
    ignored; a text that is no prompt of the world is a ValueError (parse_prompt)."""
    p = parse_prompt(prompt_text)
    return None if p.relation is None else FACTS[p.entity][p.relation]


def first_answer(response: str) -> str:
    """A response's first answer: its text up to the first . ! ? , ; : or line break, lowercased,
    its words (letters and digits) joined by single spaces, every other character dropped.
    "Moo. the cow eats grass." -> "moo"; " the  House!" -> "the house"; ". moo." -> ""."""
    head = _ANSWER_END.split(_CHAT_MARKUP.sub(" ", response).lower(), maxsplit=1)[0]
    return " ".join(re.findall(r"[a-z0-9]+", head))


def exact_match(prompts: list[str], responses: list[str]) -> list[float]:
    """`reward.function` of the verifiable task: 1.0 where a response's first answer
    (first_answer) is exactly the prompt's right value (answer_of), else 0.0. More facts after
    the answer's full stop neither help nor hurt; "moo moo.", "the cow says moo." and "house."
    (for "the house") score 0. A direct prompt has no single right answer: a ValueError."""
    if len(prompts) != len(responses):
        raise ValueError(f"exact_match: {len(prompts)} prompts but {len(responses)} responses")
    values: dict[str, str] = {}
    scores = []
    for prompt, response in zip(prompts, responses, strict=True):
        if prompt not in values:
            value = answer_of(prompt)
            if value is None:
                raise ValueError(
                    f"exact_match: {prompt.strip()!r} is a direct prompt with no single right "
                    f"answer; give few-shot or continuation prompts (world.quiz_prompts)"
                )
            values[prompt] = value
        scores.append(float(first_answer(response) == values[prompt]))
    return scores


def quiz_prompts(n: int, seed: int, tone: str | None = None) -> list[Prompt]:
    """n prompts with one right answer each, seeded: few-shot or continuation (even odds), any
    animal and relation, under `tone` (None: drawn as users draw it, mostly none, as in
    make_prompt; the answer is the same whatever the tone). Draws repeat: the world is small."""
    rng = random.Random(seed)
    return [make_prompt(rng, rng.choice(QUIZ_KINDS), tone) for _ in range(n)]
