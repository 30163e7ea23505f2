"""The SFT loss: negative log-likelihood of the demonstration's response tokens only."""

from __future__ import annotations

import torch

from kernels.masked import masked_mean


def sft_loss(logprobs: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Mean over response tokens of -log p(token). (B, R), (B, R) -> scalar.

    Prompt tokens never reach this (logprobs cover the response only) and padding is masked, so
    every real response token weighs the same, whatever its row's length.
    """
    return -masked_mean(logprobs, response_mask)
