"""What the driver checks after each weight sync: that every engine serves the learner's weights.

Three checks, each catching what the others cannot:
- the version: the engine took the update the driver sent last (not an older or newer one);
- the fingerprints (`actors/weight_sync.py`): the tensors the engine's loader took in are the
  learner's current weights bit for bit, every tensor by name. Exact in any dtype, so it catches
  a skipped update, a half-applied one, or the weights of another version, however small the
  difference, where a log-prob comparison in bf16 cannot tell them from rounding;
- the probe's log-probs: the engine computes with what it loaded (a loader that drops or
  misplaces a tensor it was given, as the tied lm_head of vLLM's CPU build once did), to within
  the rounding spread of the two implementations in the model's dtype.
"""

from __future__ import annotations

from typing import Any

import torch

from instructray.actors.remote import RemoteError
from instructray.actors.weight_sync import fingerprint_mismatch
from instructray.orchestrator.config import Config

# The most the engine's and the learner's probe log-probs may differ once the bits agree: the
# spread of the two implementations' rounding. Measured at every sync in fp32: ~1e-6. In bf16 the
# max over the probe's tokens is heavy-tailed: 0.008 at 0.34M parameters and 0.019 at 30M at
# first, but 0.34 once the demo's policy had sharpened (step 25; 0.003-0.08 at the steps before),
# from one improbable token. So in bf16 (and fp16, 3 more mantissa bits: about 8x less) the probe
# only guards against gross errors, a tensor misplaced or garbled, which move log-probs by nats;
# the fingerprints prove the bits.
SYNC_LOGPROB_LIMITS = {"float32": 1e-3, "bfloat16": 1.0, "float16": 0.25}


def sync_logprob_limit(cfg: Config) -> float:
    """rollout.sync_max_logprob_diff, or the model dtype's default when it is unset."""
    limit = cfg.rollout.sync_max_logprob_diff
    return SYNC_LOGPROB_LIMITS[cfg.model.dtype] if limit is None else limit


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


def max_logprob_diff(a: list[list[float]], b: list[list[float]]) -> float:
    """max |a - b| over ragged per-token log-probs of the same sequences."""
    diff = 0.0
    for row_a, row_b in zip(a, b, strict=True):
        diff = max(diff, (torch.tensor(row_a) - torch.tensor(row_b)).abs().max().item())
    return diff


class WeightSyncError(RemoteError):
    """An engine does not serve the learner's current weights after a sync."""
