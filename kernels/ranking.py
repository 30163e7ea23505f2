"""The InstructGPT reward-model loss: all C(K, 2) comparisons of one prompt's K ranked responses
form one batch element, whose loss is the mean over its pairs of -log sigmoid(r_w - r_l)."""

from __future__ import annotations

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


def _validate(scores: torch.Tensor, ranking: torch.Tensor, num_responses: torch.Tensor) -> None:
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


def kwise_ranking_loss(
    scores: torch.Tensor,
    ranking: torch.Tensor,
    num_responses: torch.Tensor,
    denominator: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """K-wise ranking loss. scores (B, Kmax), ranking (B, Kmax) long, num_responses (B,) -> scalar.

    Row b has K_b = num_responses[b] responses (2..9); ranking[b, :K_b] lists their indices into
    scores[b], best first; entries past K_b are padding and never read. Stats (detached):
    pairwise_accuracy (share of all pairs in the batch with r_w > r_l) and num_pairs.

    Each element (prompt) weighs the same. With denominator (the element count of the whole batch
    these rows are a share of, e.g. all ranks' elements / ranks) the loss is the sum of element
    losses / denominator, so averaged shares give the whole batch's mean however it was dealt.
    """
    _validate(scores, ranking, num_responses)
    k_max = scores.shape[1]
    slots = torch.arange(k_max, device=scores.device)  # (Kmax,)
    filled = slots < num_responses[:, None]  # (B, Kmax)
    # ranked[b, i]: score of the response at rank i (best first); padding reads index 0, unused.
    ranked = _at_least_fp32(scores).gather(1, torch.where(filled, ranking, 0))  # (B, Kmax)
    # Pair (i, j) with i < j < K_b: the response at rank i won against the one at rank j.
    upper = slots[:, None] < slots[None, :]  # (Kmax, Kmax)
    pair_mask = upper & filled[:, None, :]  # (B, Kmax, Kmax)
    losses = _pair_loss(ranked[:, :, None], ranked[:, None, :])  # (B, Kmax, Kmax)
    element_loss = masked_mean(losses, pair_mask, dim=(1, 2))  # (B,)
    with torch.no_grad():
        correct = ranked[:, :, None] > ranked[:, None, :]  # (B, Kmax, Kmax)
        stats = {
            "pairwise_accuracy": masked_mean(correct.to(ranked.dtype), pair_mask),
            "num_pairs": pair_mask.sum(),
        }
    loss = element_loss.mean() if denominator is None else element_loss.sum() / denominator
    return loss, stats
