import math

import torch
from torch.testing import assert_close

from kernels import sft_loss


def test_sft_loss_hand_computed_counts_response_tokens_only():
    # Row 0 has 2 response tokens, row 1 has 1; padding (mask 0) holds junk that must not count.
    logprobs = torch.tensor(
        [[math.log(0.5), math.log(0.25), -99.0], [math.log(0.125), -99.0, -7.0]]
    )
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # -(log 1/2 + log 1/4 + log 1/8) / 3 = (1 + 2 + 3) log 2 / 3 = 2 log 2
    assert_close(sft_loss(logprobs, mask), torch.tensor(2 * math.log(2)))


def test_sft_loss_gradient_reaches_only_response_tokens():
    logprobs = torch.tensor([[-1.0, -2.0], [-3.0, -4.0]], requires_grad=True)
    mask = torch.tensor([[1, 0], [1, 1]])
    sft_loss(logprobs, mask).backward()
    assert_close(logprobs.grad, torch.tensor([[-1 / 3, 0.0], [-1 / 3, -1 / 3]]))
