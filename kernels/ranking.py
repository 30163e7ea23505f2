"""The InstructGPT reward-model loss: all C(K, 2) comparisons of one prompt's K ranked responses
form one batch element, whose loss is the mean over its pairs of -log sigmoid(r_w - r_l).

A ranking may hold ties (InstructGPT's labelers were asked to mark them): responses of one tie
group are not compared with each other, so a tied pair adds nothing, and a prompt whose answers
all tie adds nothing at all."""

from __future__ import annotations

import numbers
from typing import Any

import torch
import torch.nn.functional as F

from instructray.kernels.masked import masked_mean

MIN_RESPONSES = 2
MAX_RESPONSES = 9


def _at_least_fp32(scores: torch.Tensor) -> torch.Tensor:
    # A bf16 reward head resolves scores to 2-3 digits: too coarse for close pairs' differences.
    return scores.to(torch.promote_types(scores.dtype, torch.float32))


def _pair_loss(winner_scores: torch.Tensor, loser_scores: torch.Tensor) -> torch.Tensor:
    # -log sigmoid(d) == softplus(-d), written so it stays finite for large |d|.
    return F.softplus(loser_scores - winner_scores)


def pairwise_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> torch.Tensor:
    """Mean of -log sigmoid(chosen - rejected): the K = 2 case. (B,), (B,) -> scalar."""
    return _pair_loss(_at_least_fp32(chosen_scores), _at_least_fp32(rejected_scores)).mean()


def _validate(
    scores: torch.Tensor,
    ranking: torch.Tensor,
    num_responses: torch.Tensor,
    tiers: torch.Tensor | None,
) -> None:
    batch, k_max = scores.shape
    if ranking.shape != scores.shape or num_responses.shape != (batch,):
        raise ValueError(
            f"expected scores and ranking (B, Kmax) and num_responses (B,), got "
            f"{tuple(scores.shape)}, {tuple(ranking.shape)}, {tuple(num_responses.shape)}"
        )
    bad_k = (num_responses < MIN_RESPONSES) | (num_responses > min(MAX_RESPONSES, k_max))
    if bad_k.any():
        row = int(bad_k.nonzero()[0, 0])
        raise ValueError(
            f"row {row}: num_responses={int(num_responses[row])} is outside "
            f"[{MIN_RESPONSES}, {min(MAX_RESPONSES, k_max)}] (Kmax={k_max})"
        )
    # ranking[b, :K_b] must be a permutation of 0..K_b-1: each index appears there exactly once.
    slots = torch.arange(k_max, device=scores.device)  # (Kmax,)
    filled = slots < num_responses[:, None]  # (B, Kmax)
    hits = (ranking[:, :, None] == slots) & filled[:, :, None]  # (B, Kmax rank, Kmax index)
    bad_rank = (hits.sum(dim=1) != filled.long()).any(dim=-1)  # (B,)
    if bad_rank.any():
        row = int(bad_rank.nonzero()[0, 0])
        k = int(num_responses[row])
        order = ranking[row, :k].tolist()
        raise ValueError(f"row {row}: ranking[:{k}]={order} is not a permutation of 0..{k - 1}")
    if tiers is not None:
        if tiers.shape != scores.shape:
            raise ValueError(
                f"expected tiers (B, Kmax) = {tuple(scores.shape)}, got {tuple(tiers.shape)}"
            )
        # tiers[b, :K_b] are the tie groups of the rank positions, best first: non-decreasing.
        steps = (tiers[:, 1:] < tiers[:, :-1]) & filled[:, 1:]
        if steps.any():
            row = int(steps.any(dim=1).nonzero()[0, 0])
            k = int(num_responses[row])
            raise ValueError(f"row {row}: tiers[:{k}]={tiers[row, :k].tolist()} must not decrease")


def kwise_ranking_loss(
    scores: torch.Tensor,
    ranking: torch.Tensor,
    num_responses: torch.Tensor,
    denominator: float | None = None,
    tiers: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """K-wise ranking loss. scores (B, Kmax), ranking (B, Kmax) long, num_responses (B,) -> scalar.

    Row b has K_b = num_responses[b] responses (2..9); ranking[b, :K_b] lists their indices into
    scores[b], best first; entries past K_b are padding and never read. tiers (B, Kmax) long, if
    given, holds the tie group of each rank position (non-decreasing: [0, 1, 1, 2] says the 2nd
    and 3rd are tied); None means no ties. Pair (i, j), i above j, counts when tiers differ.
    Stats (detached): pairwise_accuracy (share of the batch's counted pairs with r_w > r_l
    strictly: a tied score is a miss, so a reward model collapsed to a constant scores 0),
    num_pairs (counted) and tied_pairs (dropped).

    Each element (prompt) with at least one counted pair weighs the same; one with none adds 0
    and is not counted. With denominator (the counted element count of the whole batch these rows
    are a share of, e.g. all ranks' elements / ranks) the loss is the sum of element losses /
    denominator, so averaged shares give the whole batch's mean however it was dealt.
    """
    _validate(scores, ranking, num_responses, tiers)
    k_max = scores.shape[1]
    slots = torch.arange(k_max, device=scores.device)  # (Kmax,)
    filled = slots < num_responses[:, None]  # (B, Kmax)
    # ranked[b, i]: score of the response at rank i (best first); padding reads index 0, unused.
    ranked = _at_least_fp32(scores).gather(1, torch.where(filled, ranking, 0))  # (B, Kmax)
    # Pair (i, j) with i < j < K_b: the response at rank i won against the one at rank j.
    upper = slots[:, None] < slots[None, :]  # (Kmax, Kmax)
    all_pairs = upper & filled[:, None, :]  # (B, Kmax, Kmax)
    if tiers is None:
        pair_mask, tied = all_pairs, torch.zeros_like(all_pairs)
    else:
        tied = all_pairs & (tiers[:, :, None] == tiers[:, None, :])
        pair_mask = all_pairs & ~tied
    losses = _pair_loss(ranked[:, :, None], ranked[:, None, :])  # (B, Kmax, Kmax)
    element_loss = masked_mean(losses, pair_mask, dim=(1, 2))  # (B,); 0 where no pair counts
    counted = pair_mask.any(dim=2).any(dim=1)  # (B,)
    with torch.no_grad():
        correct = ranked[:, :, None] > ranked[:, None, :]  # (B, Kmax, Kmax)
        stats = {
            "pairwise_accuracy": masked_mean(correct.to(ranked.dtype), pair_mask),
            "num_pairs": pair_mask.sum(),
            "tied_pairs": tied.sum(),
        }
    if denominator is None:
        loss = element_loss.sum() / counted.sum().clamp(min=1)
    else:
        loss = element_loss.sum() / denominator
    return loss, stats


def tie_tensors(
    groups: list[list[list[int]]], k_max: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ranking, tiers) (B, Kmax) long of rankings given as tie groups, best first
    ([[0], [2, 1], [3]] -> ranking [0, 2, 1, 3], tiers [0, 1, 1, 2]); padding is -1."""
    ranking = torch.full((len(groups), k_max), -1, dtype=torch.long)
    tiers = torch.full((len(groups), k_max), -1, dtype=torch.long)
    for b, row in enumerate(groups):
        order = [i for group in row for i in group]
        ranking[b, : len(order)] = torch.tensor(order)
        tiers[b, : len(order)] = torch.tensor([t for t, g in enumerate(row) for _ in g])
    return ranking.to(device), tiers.to(device)


def tie_groups(ranking: Any, k: int) -> list[list[int]]:
    """A ranking of K responses as tie groups, best first, or a ValueError saying what is wrong.

    Takes a flat permutation of 0..K-1 ([2, 0, 1]: no ties), tie groups ([[2], [0, 1]]: 0 and 1
    tie) or a mix of both ([2, [0, 1]]); every index appears once."""
    if not isinstance(ranking, (list, tuple)) or not ranking:
        raise ValueError(f"must be a list of response indices 0..{k - 1}, best first")
    groups = []
    for item in ranking:
        group = list(item) if isinstance(item, (list, tuple)) else [item]
        if not group or not all(_is_index(i) for i in group):
            raise ValueError(
                f"must list the indices 0..{k - 1} best first, each an int or a list of tied "
                f"ints; got {item!r} in it"
            )
        groups.append([int(i) for i in group])
    seen: set[int] = set()
    for i in (i for g in groups for i in g):
        if not 0 <= i < k:
            raise ValueError(f"index {i} is outside 0..{k - 1}")
        if i in seen:
            raise ValueError(f"index {i} appears twice")
        seen.add(i)
    if len(seen) < k:
        missing = sorted(set(range(k)) - seen)
        raise ValueError(f"index {missing[0]} is missing (each of 0..{k - 1} once, best first)")
    return groups


def _is_index(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def ranking_value(groups: list[list[int]]) -> list[Any]:
    """The JSON form of tie groups in a rankings row: a flat list when nothing ties."""
    return [i for g in groups for i in g] if all(len(g) == 1 for g in groups) else groups
