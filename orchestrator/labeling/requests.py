"""What a labeler may send: a ranking's body checked against its task's answers, and the one error
the service answers a refused request with (an HTTP status and one line naming the field)."""

from __future__ import annotations

import json
from typing import Any

# InstructGPT's labelers rated each answer 1-7 and ticked these (its Table 3), then ranked.
RATING_RANGE = (1, 7)
FLAGS = (
    "fails_to_follow_instruction",
    "inappropriate_for_customer_assistant",
    "hallucination",
    "satisfies_constraint",
    "sexual_content",
    "violent_content",
    "encourages_violence_abuse_or_self_harm",
    "denigrates_protected_class",
    "harmful_advice",
    "expresses_opinion",
    "expresses_moral_judgment",
)


class LabelingError(Exception):
    """A request the store refuses: an HTTP status and one line naming the field."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def parse_ranking(
    body: Any, positions: dict[str, int]
) -> tuple[list[list[int]], dict[str, int], dict[str, list[str]], bool]:
    """(tie groups of positions, ratings and flags by position) of a ranking's body, whose ids
    are the task's answer keys; a 400 that names the field otherwise."""
    if not isinstance(body, dict):
        raise LabelingError(400, "body: must be a JSON object")
    unknown = set(body) - {"ranking", "ratings", "flags", "not_rankable"}
    if unknown:
        raise LabelingError(400, f"{sorted(unknown)[0]}: not a field of a ranking")
    not_rankable = body.get("not_rankable", False)
    if not isinstance(not_rankable, bool):
        raise LabelingError(400, "not_rankable: must be true or false")
    groups: list[list[int]] = []
    ranking = body.get("ranking")
    if not_rankable and ranking in (None, []):
        pass
    else:
        if not isinstance(ranking, list) or not ranking:
            raise LabelingError(400, "ranking: must be a list of lists of answer ids, best first")
        seen: set[str] = set()
        for group in ranking:
            if not isinstance(group, list) or not group:
                raise LabelingError(400, "ranking: each entry must be a non-empty list of ids")
            for key in group:
                if not isinstance(key, str) or key not in positions:
                    raise LabelingError(
                        400, f"ranking: {json.dumps(key)[:40]} is no answer of this task"
                    )
                if key in seen:
                    raise LabelingError(400, f"ranking: answer {key} appears twice")
                seen.add(key)
            groups.append([positions[k] for k in group])
        missing = sorted(set(positions) - seen)
        if missing:
            raise LabelingError(400, f"ranking: answer {missing[0]} is missing; rank every answer")
    ratings = _by_answer(body.get("ratings", {}), positions, "ratings", _rating)
    flags = _by_answer(body.get("flags", {}), positions, "flags", _flags)
    return groups, ratings, flags, not_rankable


def _by_answer(value: Any, positions: dict[str, int], field: str, check: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise LabelingError(400, f"{field}: must be an object keyed by answer id")
    out = {}
    for key, v in value.items():
        if key not in positions:
            raise LabelingError(400, f"{field}: {json.dumps(key)[:40]} is no answer of this task")
        out[str(positions[key])] = check(v, f"{field}.{key}")
    return out


def _rating(v: Any, where: str) -> int:
    lo, hi = RATING_RANGE
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise LabelingError(
            400, f"{where}: must be an integer {lo} to {hi}, got {json.dumps(v)[:40]}"
        )
    return v


def _flags(v: Any, where: str) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(f, str) for f in v):
        raise LabelingError(400, f"{where}: must be a list of flag names")
    for f in v:
        if f not in FLAGS:
            raise LabelingError(
                400, f"{where}: unknown flag {f[:40]!r} (known: {', '.join(FLAGS)})"
            )
    return sorted(set(v))
