"""Rule-based rewards for `reward.function: instructray.actors.scoring.rule_rewards:NAME`, and
the checks of what a reward function and a labeler return.

Signature: fn(prompts: list[str], responses: list[str], **columns) -> list[float], one finite
score per response (reward_functions.py says what arrives). Write your own in a file
(`path/to/file.py:function`) or any importable module.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from instructray.kernels import tie_groups

TARGET_WORD = "cat"


def check_scores(scores: Any, n: int, prompts: list[str], key: str = "reward") -> list[float]:
    """A reward's return as n floats; a wrong type or count, or a non-finite value, is a
    ValueError naming the sample and its prompt."""
    if isinstance(scores, (str, bytes)) or not hasattr(scores, "__len__"):
        raise ValueError(
            f"{key} returned a {type(scores).__name__}, expected a list of {n} numbers"
        )
    if len(scores) != n:
        raise ValueError(f"{key} returned {len(scores)} scores for {n} samples")
    out = []
    for i, s in enumerate(scores.tolist() if hasattr(scores, "tolist") else scores):
        where = f"sample {i} (prompt {prompts[i][:60]!r})"
        if isinstance(s, bool) or not isinstance(s, numbers.Real):
            raise ValueError(
                f"{key} returned a {type(s).__name__} ({str(s)[:40]!r}) for {where}, expected "
                f"a number"
            )
        if not math.isfinite(s):
            raise ValueError(f"{key} returned non-finite {s} for {where}")
        out.append(float(s))
    return out


def check_ranking(ranking: Any, n: int, key: str = "pipeline.labeler") -> list[list[int]]:
    """A labeler's return as tie groups, best first (kernels.tie_groups), or a ValueError."""
    try:
        return tie_groups(ranking, n)
    except ValueError as e:
        raise ValueError(
            f"{key} returned {str(ranking)[:80]} for {n} responses: {e}; expected the indices "
            f"0..{n - 1} best first, each once, tied ones in a list ([2, [0, 1]])"
        ) from None


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
