"""Rule-based rewards for `reward.function: actors.rule_rewards:NAME`.

Signature: fn(prompts: list[str], responses: list[str]) -> list[float], one finite score per
response. Write your own in any importable module.
"""

from __future__ import annotations

TARGET_WORD = "cat"


def count_target_word(prompts: list[str], responses: list[str]) -> list[float]:
    """How often the response says 'cat' (a reward a tiny policy learns in a few dozen steps)."""
    return [float(r.count(TARGET_WORD)) for r in responses]


def brevity(prompts: list[str], responses: list[str]) -> list[float]:
    """Shorter responses score higher: -characters / 100."""
    return [-len(r) / 100.0 for r in responses]


def rank_by_target_word(prompt: str, responses: list[str]) -> list[int]:
    """A labeler for `pipeline.labeler`: response indices best first, most 'cat' first (ties in
    the given order). Signature: (prompt, responses) -> ranking."""
    scores = count_target_word([prompt] * len(responses), responses)
    return sorted(range(len(responses)), key=lambda i: -scores[i])
