"""What the driver checks after each weight sync: that every engine serves the learner's weights.

Three checks, each catching what the others cannot:
- the version: the engine took the update the driver sent last (not an older or newer one);
- the fingerprints (`actors/weight_sync.py`): the tensors the engine's loader took in are the
  learner's current weights bit for bit, every tensor by name. Exact in any dtype, so it catches
  a skipped update, a half-applied one, or the weights of another version, however small the
  difference, where a log-prob comparison in bf16 cannot tell them from rounding;
- the probe's log-probs: the engine computes with what it loaded (a loader that drops or
  misplaces a tensor it was given, as the tied lm_head of vLLM's CPU build once did), to within
  the rounding spread of the two implementations in the model's dtype: their mean and 99th
  percentile difference over the probe's tokens, each within a limit (the max is logged).
"""

from __future__ import annotations

from typing import Any

import torch

from instructray.actors.remote import RemoteError
from instructray.actors.weight_sync import fingerprint_mismatch
from instructray.orchestrator.config import Config

# How far the engine's and the learner's probe log-probs may differ once the bits agree: the
# spread of the two implementations' rounding, as (mean, 99th percentile) of |engine - learner|
# over the probe's tokens. The max is logged, never gated: in bf16 it is heavy-tailed (0.008 at
# 0.34M parameters and 0.019 at 30M at first, 0.34 once the demo's policy had sharpened, from one
# improbable token), and a few thousand probe tokens of a 7B model on a GPU hold rarer ones still.
# The mean is not: measured on the tiny policy in bf16 after a noisy update (std 0.05 / 0.01),
# mean 0.0040 / 0.0012, p99 0.015 / 0.004; the same update with the CPU build's tied LM head left
# at its old weights (the fingerprints agree: only the log-probs show it) gave mean 0.45 / 0.091,
# p99 1.48 / 0.29. fp32 agrees to ~1e-6; fp16 has 3 more mantissa bits than bf16 (~8x less).
SYNC_LOGPROB_LIMITS = {
    "float32": (1e-4, 1e-3),
    "bfloat16": (0.05, 1.0),
    "float16": (0.01, 0.25),
}


def sync_logprob_limits(cfg: Config) -> tuple[float, float]:
    """(mean, p99) limits: rollout.sync_mean_logprob_diff and rollout.sync_p99_logprob_diff,
    each the model dtype's default where unset."""
    mean, p99 = SYNC_LOGPROB_LIMITS[cfg.model.dtype]
    r = cfg.rollout
    return (
        mean if r.sync_mean_logprob_diff is None else r.sync_mean_logprob_diff,
        p99 if r.sync_p99_logprob_diff is None else r.sync_p99_logprob_diff,
    )


def logprob_diff_stats(a: list[list[float]], b: list[list[float]]) -> dict[str, float]:
    """mean, p99 and max of |a - b| over every token of ragged per-token log-probs of the same
    sequences (the p99 by linear interpolation between order statistics)."""
    rows = [
        (torch.tensor(x, dtype=torch.float64) - torch.tensor(y, dtype=torch.float64)).abs()
        for x, y in zip(a, b, strict=True)
    ]
    diff = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.float64)
    if diff.numel() == 0:
        return {"mean": 0.0, "p99": 0.0, "max": 0.0}
    return {
        "mean": diff.mean().item(),
        "p99": torch.quantile(diff, 0.99).item(),
        "max": diff.max().item(),
    }


def logprob_problem(stats: dict[str, float], limits: tuple[float, float], dtype: str) -> str:
    """What is wrong with an engine's probe log-prob differences against the limits; "" if
    nothing (a NaN is a problem)."""
    for (name, key), limit in zip(
        (("mean", "rollout.sync_mean_logprob_diff"), ("p99", "rollout.sync_p99_logprob_diff")),
        limits,
        strict=True,
    ):
        if not stats[name] <= limit:
            return (
                f"differs from the learner by {stats[name]:.3g} in {name} |log-prob| on the probe "
                f"batch (limit {key} = {limit:g} for {dtype}; max {stats['max']:.3g})"
            )
    return ""


def sync_problem(engine: dict[str, Any], fingerprints: Any, version: int) -> str:
    """What is wrong with an engine's weights_state against the learner's fingerprints; "" if
    nothing. At version 0 the engine serves the weights it started from: no fingerprints."""
    if engine["version"] != version:
        return f"holds version {engine['version']}, not {version}"
    if version == 0:
        return ""
    if not engine["fingerprints"]:
        return "reports no weights loaded since it started"
    for worker, got in enumerate(engine["fingerprints"]):
        mismatch = fingerprint_mismatch(fingerprints, got)
        if mismatch:
            return f"worker {worker} loaded other weights than the learner holds: {mismatch}"
    return ""


class WeightSyncError(RemoteError):
    """An engine does not serve the learner's current weights after a sync."""
