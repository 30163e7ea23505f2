"""The SFT loss: negative log-likelihood of the demonstration's response tokens only."""

from __future__ import annotations

import torch

from instructray.kernels.masked import masked_mean, masked_sum


def sft_loss(
    logprobs: torch.Tensor, response_mask: torch.Tensor, denominator: float | None = None
) -> torch.Tensor:
    """Mean over response tokens of -log p(token). (B, R), (B, R) -> scalar.

    Prompt tokens never reach this (logprobs cover the response only) and padding is masked, so
    every real response token weighs the same, whatever its row's length. With denominator (the
    token count of the whole batch this rows are a share of, e.g. all ranks' tokens / ranks) it is
    the sum over these tokens / denominator: shares whose gradients are averaged then give the
    whole batch's token mean, however its rows were dealt out.
    """
    if denominator is None:
        return -masked_mean(logprobs, response_mask)
    return -masked_sum(logprobs, response_mask) / denominator
