"""Per-token KL estimators between the sampling policy and a reference (Schulman, "Approximating
KL Divergence", 2020). Tokens are sampled from the policy, so each estimator's expectation is
KL(policy || reference)."""

from __future__ import annotations

import torch

from instructray.kernels.masked import zero_masked

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


def kl_loss(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    estimator: str = "k3",
) -> torch.Tensor:
    """Per-token KL(policy || reference) term of the loss (GRPO's KL in the loss, not in the
    reward), 0 on masked tokens; aggregate it with aggregate_loss. 3 x (B, T) -> (B, T).

    Gradients w.r.t. logprobs: k1 -> 1, k2 -> log pi - log ref, k3 -> 1 - ref / pi."""
    # Masked positions compare 0 with 0, so their KL is 0 under every estimator. Masking the
    # inputs, not the output, keeps padding's log-probs (possibly -inf) out of exp: a 0 from
    # torch.where times an inf derivative would be a NaN gradient.
    return kl_penalty(
        zero_masked(logprobs, response_mask), zero_masked(ref_logprobs, response_mask), estimator
    )
