"""How far labelers agree, and one ranking from several, for rankings with ties (tie groups of
answer positions, best first).

- Pairwise agreement, InstructGPT's measure: two rankings of one task agree on a pair of answers
  when they order it the same way (or both tie it); their agreement is the share of the task's
  C(K, 2) pairs they agree on. InstructGPT's labelers agreed 72.6 +- 1.5% of the time.
- Consensus by ranked pairs (Tideman), as OpenAssistant merged its rankings: each pair's
  majority, strongest first, is kept unless it closes a cycle; answers that no kept majority
  orders fall in one tie group.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from instructray.kernels import ranking_value, tie_groups

INSTRUCTGPT_AGREEMENT = 0.726  # training labelers with each other (Ouyang et al. 2022, 3.4)


def tiers(groups: list[list[int]]) -> dict[int, int]:
    """position -> its tie group's index (0 = best)."""
    return {i: t for t, group in enumerate(groups) for i in group}


def _order(tier: dict[int, int], a: int, b: int) -> int:
    """1 if a is ranked above b, -1 if below, 0 if they tie."""
    return (tier[a] < tier[b]) - (tier[a] > tier[b])


def pair_agreement(x: list[list[int]], y: list[list[int]]) -> tuple[int, int]:
    """(pairs both rankings order alike, pairs) over the answers both rank."""
    tx, ty = tiers(x), tiers(y)
    answers = sorted(set(tx) & set(ty))
    agree = pairs = 0
    for a, b in itertools.combinations(answers, 2):
        pairs += 1
        agree += _order(tx, a, b) == _order(ty, a, b)
    return agree, pairs


def agreement(rankings: Iterable[tuple[int, str, list[list[int]]]]) -> dict:
    """Pairwise agreement of (task id, labeler, tie groups) rankings over the tasks that two or
    more labelers ranked: overall and per labeler (the pairs they shared with others), with the
    pair counts behind each share."""
    by_task: dict[int, list[tuple[str, list[list[int]]]]] = defaultdict(list)
    for task, labeler, groups in rankings:
        by_task[task].append((labeler, groups))
    total = [0, 0]
    per: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for ranked in by_task.values():
        for (la, ga), (lb, gb) in itertools.combinations(ranked, 2):
            agree, pairs = pair_agreement(ga, gb)
            for counts in (total, per[la], per[lb]):
                counts[0] += agree
                counts[1] += pairs
    return {
        "agreement": total[0] / total[1] if total[1] else None,
        "pairs": total[1],
        "by_labeler": {
            name: {"agreement": a / n if n else None, "pairs": n}
            for name, (a, n) in sorted(per.items())
        },
    }


def consensus(rankings: list[list[list[int]]]) -> list[list[int]]:
    """One ranking (tie groups, best first) of several rankings of the same answers, by ranked
    pairs: a pair's majority is its margin of rankings (ties count for neither); majorities are
    locked strongest first (then by the pair, for a fixed result) unless one closes a cycle; the
    answers fall into layers, each the answers whose locked betters are all in earlier layers."""
    answers = sorted({i for groups in rankings for g in groups for i in g})
    if len(rankings) == 1:
        return [list(g) for g in rankings[0]]
    wins: dict[tuple[int, int], int] = defaultdict(int)
    for groups in rankings:
        tier = tiers(groups)
        for a, b in itertools.permutations(answers, 2):
            if a in tier and b in tier and tier[a] < tier[b]:
                wins[a, b] += 1
    majorities = sorted(
        ((wins[a, b] - wins[b, a], a, b) for a, b in itertools.permutations(answers, 2)),
        key=lambda m: (-m[0], m[1], m[2]),
    )
    above: dict[int, set[int]] = {a: set() for a in answers}  # locked: a is below each of these
    for margin, a, b in majorities:
        if margin <= 0:
            break
        if not _reaches(b, a, above):  # a over b closes a cycle if b already reaches over a
            above[b].add(a)
    layers, placed = [], set()
    while len(placed) < len(answers):
        layer = [a for a in answers if a not in placed and above[a] <= placed]
        layers.append(layer)
        placed.update(layer)
    return layers


def _reaches(start: int, goal: int, above: dict[int, set[int]]) -> bool:
    """Whether `goal` is below `start` through locked majorities (start over ... over goal)."""
    stack, seen = [goal], set()
    while stack:
        node = stack.pop()
        if node == start:
            return True
        if node not in seen:
            seen.add(node)
            stack.extend(above[node])
    return False


def merge_by_task(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One export row per task from rows of one ranking each: the consensus ranking, the mean of
    each answer's ratings, the union of its flags, and who ranked it."""
    by_task: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by_task.setdefault(row["task_id"], []).append(row)
    out = []
    for group in by_task.values():
        first, k = group[0], len(group[0]["responses"])
        rated = [[r["ratings"][i] for r in group if r["ratings"][i] is not None] for i in range(k)]
        merged = consensus([tie_groups(r["ranking"], k) for r in group])
        out.append(
            {
                **first,
                "ranking": ranking_value(merged),
                "labeler": ",".join(r["labeler"] for r in group),
                "ratings": [round(sum(v) / len(v), 2) if v else None for v in rated],
                "flags": [sorted({f for r in group for f in r["flags"][i]}) for i in range(k)],
                "ranking_id": max(r["ranking_id"] for r in group),
                "rankings": len(group),
                "ranked_at": max(r["ranked_at"] for r in group),
            }
        )
    return out
