"""Where old log-probs come from, and the engine-vs-learner gap of the sampled tokens: whether
the engines' log-probs stand in for a learner forward, and the truncated importance weights
(ppo.tis_cap) that correct the policy loss for the gap."""

from __future__ import annotations

import logging
from typing import Any

import torch

from instructray import kernels
from instructray.orchestrator.config import Config

logger = logging.getLogger(__name__)


def decide_old_logprobs(cfg: Config, measured_diff: float) -> bool:
    """Whether the engines' sampled-token log-probs stand in for a learner forward, given
    the engine-vs-learner probe difference measured at the first check; logged, and kept
    for the run (a checkpoint holds it)."""
    p, r = cfg.ppo, cfg.rollout
    if p.old_logprobs != "auto":
        return p.old_logprobs == "rollout"
    if r.max_staleness:
        # Pipelined: the engines' log-probs are the behaviour policy's, a version behind; the
        # learner's (proximal) ones anchor the clip and TIS weighs the gap between them.
        logger.info("ppo: old_logprobs from the learner (rollout.max_staleness >= 1)")
        return False
    # The engine reports raw (temperature-1) log-probs: they serve only at temperature 1,
    # and only where they equal the learner's (fp32), not where rounding parts them (bf16).
    serve = r.temperature == 1.0 and measured_diff <= p.old_logprobs_tolerance
    logger.info(
        "ppo: old_logprobs from the %s (ppo.old_logprobs auto: engine-vs-learner probe "
        "difference %.3g %s ppo.old_logprobs_tolerance = %g%s)",
        "engines" if serve else "learner",
        measured_diff,
        "<=" if measured_diff <= p.old_logprobs_tolerance else ">",
        p.old_logprobs_tolerance,
        "" if r.temperature == 1.0 else f", rollout.temperature = {r.temperature}",
    )
    return serve


def importance_weights(cfg: Config) -> bool:
    """Whether the engines' log-probs are those of the sampling distribution (temperature 1,
    no top-k / top-p), so that learner/engine ratios are importance weights."""
    r = cfg.rollout
    return r.temperature == 1.0 and r.top_p == 1.0 and r.top_k == -1


def truncated_importance(
    cfg: Config,
    old_logprobs: torch.Tensor,  # (B, R) the learner's
    rollout_logprobs: torch.Tensor,  # (B, R) the engines'
    mask: torch.Tensor,  # (B, R)
) -> dict[str, Any]:
    """The engine-vs-learner gap of the sampled tokens; with ppo.tis_cap, the truncated
    importance weights that correct the policy loss for it. -> {metrics, weights?}."""
    cap = cfg.ppo.tis_cap
    weights, stats = kernels.truncated_is_weights(
        old_logprobs, rollout_logprobs, mask, float("inf") if cap is None else cap
    )
    metrics = {
        "rollout/logprob_diff/mean": stats["logprob_diff_mean"].item(),
        "rollout/logprob_diff/max": stats["logprob_diff_max"].item(),
    }
    if cap is None:
        return {"metrics": metrics}
    metrics["rollout/tis/clipfrac"] = stats["tis_clipfrac"].item()
    return {"metrics": metrics, "weights": weights}
