"""PPO losses: clipped policy surrogate (with dual clip), clipped value loss, entropy, and the
reduction of a per-token loss matrix to a scalar."""

from __future__ import annotations

import torch

from instructray.kernels.kl import kl_penalty
from instructray.kernels.masked import masked_mean, masked_sum, zero_masked

LOSS_AGG_MODES = (
    "token_mean",
    "seq_mean_token_mean",
    "seq_mean_token_sum",
    "seq_mean_token_sum_norm",
)
# |log pi - log pi_old| beyond this is clamped before exp: e^88 overflows fp32, and an inf ratio
# gives a NaN gradient even on a masked token (inf * 0). Peers clamp at the same bound (veRL,
# OpenRLHF: +-20); e^20 is far past any clip range, so only the gradient of such tokens changes.
MAX_LOG_RATIO = 20.0


def aggregate_loss(
    loss_mat: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    denominator: float | torch.Tensor | None = None,
    max_new_tokens: int | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss to a scalar over response tokens. (B, T), (B, T) -> scalar.

    token_mean: every token weighs the same. seq_mean_token_mean: every sequence weighs the same.
    seq_mean_token_sum: sequences weigh the same, tokens are summed (no length normalisation).
    seq_mean_token_sum_norm: seq_mean_token_sum / max_new_tokens, the generation budget (Dr.
    GRPO, Liu et al. 2025: a constant, not each response's length, so no length bias; only this
    mode reads max_new_tokens). As TRL's loss_type="dr_grpo" (token sum / (rows x
    max_completion_length)) and veRL's agg_loss "seq-mean-token-sum-norm" with
    loss_scale_factor = the budget (veRL's default divides by the padded width of the batch,
    which changes with the longest response of each micro-batch).
    The seq_* modes leave out rows with no response token.

    With a denominator, the sum this mode means over (tokens, or rows with tokens) is divided
    by it instead of by this batch's own count: give the count of the whole batch that these
    rows are a part of (`aggregation_count` summed over its micro-batches and ranks), and the
    parts' losses add up to the whole batch's, however it is cut.
    """
    if mode == "token_mean":
        per_unit, units = loss_mat, mask
    elif mode == "seq_mean_token_mean":
        per_unit, units = masked_mean(loss_mat, mask, dim=-1), mask.bool().any(dim=-1)  # (B,)
    elif mode == "seq_mean_token_sum":
        per_unit, units = masked_sum(loss_mat, mask, dim=-1), mask.bool().any(dim=-1)  # (B,)
    elif mode == "seq_mean_token_sum_norm":
        if max_new_tokens is None or max_new_tokens <= 0:
            raise ValueError(f"loss_agg {mode} needs max_new_tokens > 0, got {max_new_tokens}")
        per_unit = masked_sum(loss_mat, mask, dim=-1) / max_new_tokens  # (B,)
        units = mask.bool().any(dim=-1)
    else:
        raise ValueError(f"unknown loss_agg mode {mode!r}; valid: {', '.join(LOSS_AGG_MODES)}")
    if denominator is None:
        return masked_mean(per_unit, units)
    return masked_sum(per_unit, units) / denominator


def aggregation_count(mask: torch.Tensor, mode: str) -> torch.Tensor:
    """What aggregate_loss means over in this mode: response tokens (token_mean) or rows with a
    response token (seq_*; seq_mean_token_sum_norm's constant divides each row). (B, T) -> 0-d
    float tensor."""
    if mode not in LOSS_AGG_MODES:
        raise ValueError(f"unknown loss_agg mode {mode!r}; valid: {', '.join(LOSS_AGG_MODES)}")
    units = mask.bool() if mode == "token_mean" else mask.bool().any(dim=-1)
    return units.sum().to(torch.float64)


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_eps: float,
    dual_clip: float | None = None,
    loss_agg: str = "token_mean",
    is_weights: torch.Tensor | None = None,
    denominator: float | torch.Tensor | None = None,
    max_new_tokens: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate loss, optional dual clip (Ye et al. 2020). 4 x (B, T) -> scalar, stats.

    is_weights (B, T), detached: each token's surrogate is multiplied by it (the truncated
    importance weights of `truncated_is_weights`). denominator, max_new_tokens: see
    aggregate_loss.

    Stats (detached 0-d tensors): clipfrac (share of tokens where the clipped term was taken),
    dual_clipfrac (share where the dual clip was taken), approx_kl (k3 estimate of
    KL(old || current) on the rollout tokens). The log-ratio is clamped to +-MAX_LOG_RATIO.
    """
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    log_ratio = (logprobs - old_logprobs).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)  # (B, T)
    ratio = torch.exp(log_ratio)
    pg_unclipped = -advantages * ratio
    pg_clipped = -advantages * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    pg = torch.maximum(pg_unclipped, pg_clipped)
    clipped = pg_unclipped < pg_clipped
    if dual_clip is not None:
        # With A < 0 and a huge ratio the clipped surrogate is unbounded; cap it at -A * c.
        pg_cap = -advantages * dual_clip
        dual_clipped = (advantages < 0) & (pg_cap < pg)
        pg = torch.where(dual_clipped, pg_cap, pg)
    else:
        dual_clipped = torch.zeros_like(clipped)
    if is_weights is not None:
        pg = pg * is_weights
    loss = aggregate_loss(pg, response_mask, loss_agg, denominator, max_new_tokens)
    with torch.no_grad():
        # Tokens were sampled from the old policy, so it plays the "policy" role of kl_penalty.
        approx_kl = masked_mean(kl_penalty(old_logprobs, logprobs, "k3"), response_mask)
        stats = {
            "clipfrac": masked_mean(clipped.to(pg.dtype), response_mask),
            "dual_clipfrac": masked_mean(dual_clipped.to(pg.dtype), response_mask),
            "approx_kl": approx_kl,
        }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    response_mask: torch.Tensor,
    clip_eps: float | None,
    loss_agg: str = "token_mean",
    denominator: float | torch.Tensor | None = None,
    max_new_tokens: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss 0.5 * max((v - R)^2, (clip(v, old +- eps) - R)^2). 4 x (B, T) -> scalar.

    No clipping when clip_eps is None. Stats: vf_clipfrac (share of tokens where the clipped
    term was taken), detached 0-d tensor. denominator, max_new_tokens: see aggregate_loss.
    """
    vf_unclipped = (values - returns) ** 2  # (B, T)
    if clip_eps is None:
        vf = vf_unclipped
        clipped = torch.zeros_like(vf, dtype=torch.bool)
    else:
        values_clipped = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
        vf_clipped = (values_clipped - returns) ** 2
        vf = torch.maximum(vf_unclipped, vf_clipped)
        # Taken only where clamp really moved v: old + (v - old) can differ from v by rounding.
        moved = (values - old_values).abs() > clip_eps
        clipped = moved & (vf_unclipped < vf_clipped)
    loss = 0.5 * aggregate_loss(vf, response_mask, loss_agg, denominator, max_new_tokens)
    with torch.no_grad():
        stats = {"vf_clipfrac": masked_mean(clipped.to(vf.dtype), response_mask)}
    return loss, stats


def truncated_is_weights(
    old_logprobs: torch.Tensor,
    rollout_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    cap: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Truncated importance sampling (TIS; Yao et al. 2025) of learner vs engine. 3 x (B, T) ->
    weights (B, T), stats.

    The engine samples from pi_engine, which its kernels and precision make differ from the
    learner's pi_old; weighting each token's surrogate by min(pi_old / pi_engine, cap) corrects
    for it with a bounded variance. 0 on padding. Stats (detached): tis_clipfrac (share of
    tokens whose ratio exceeded cap), logprob_diff_mean and logprob_diff_max (|log pi_old -
    log pi_engine| over response tokens).
    """
    if cap <= 0:
        raise ValueError(f"the TIS cap must be > 0, got {cap}")
    log_ratio = (old_logprobs - rollout_logprobs).detach()  # (B, T)
    ratio = torch.exp(log_ratio)
    weights = zero_masked(ratio.clamp(max=cap), response_mask)
    gap = zero_masked(log_ratio.abs(), response_mask)
    stats = {
        "tis_clipfrac": masked_mean((ratio > cap).to(ratio.dtype), response_mask),
        "logprob_diff_mean": masked_mean(gap, response_mask),
        "logprob_diff_max": gap.max() if gap.numel() else gap.sum(),
    }
    return weights, stats


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) over the last dim; logits must be finite. (..., V) -> (...)."""
    # H = -sum p log p = logsumexp(l) - sum p * l; never forms log p, so no 0 * -inf.
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)
