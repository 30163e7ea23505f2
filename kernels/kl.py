"""Per-token KL estimators between the sampling policy and a reference (Schulman, "Approximating
KL Divergence", 2020). Tokens are sampled from the policy, so each estimator's expectation is
KL(policy || reference)."""

from __future__ import annotations

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_penalty(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1"
) -> torch.Tensor:
    """Per-token KL estimate from log-probs of the sampled tokens. (B, T), (B, T) -> (B, T)."""
    log_ratio = logprobs - ref_logprobs  # log(pi / ref)
    if estimator == "k1":
        return log_ratio  # unbiased, high variance, can be negative
    if estimator == "k2":
        return 0.5 * log_ratio**2  # biased, low variance, >= 0
    if estimator == "k3":
        # (r - 1) - log r with r = ref / pi: unbiased and >= 0.
        return torch.exp(-log_ratio) - 1 + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; valid: {', '.join(KL_ESTIMATORS)}")
