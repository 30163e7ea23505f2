import math

import torch
from torch.testing import assert_close

from instructray.kernels import sft_loss


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


def test_sft_loss_with_a_denominator_is_the_token_sum_over_it():
    # -(log 1/2 + log 1/4) = 3 log 2 over a whole batch of 6 tokens (this share holds 2 of them)
    logprobs = torch.tensor([[math.log(0.5), math.log(0.25), -99.0]])
    mask = torch.tensor([[1, 1, 0]])
    assert_close(sft_loss(logprobs, mask, denominator=6.0), torch.tensor(3 * math.log(2) / 6))


def test_shares_with_the_batch_denominator_average_to_the_whole_batch_mean():
    # Rows of 1 and 3 tokens dealt to two ranks: each share over (4 tokens / 2 ranks), averaged,
    # is the mean over all 4 tokens; each share's own mean, averaged, is not.
    logprobs = torch.tensor([[-1.0, 0.0, 0.0], [-2.0, -3.0, -4.0]])
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    whole = sft_loss(logprobs, mask)  # (1 + 2 + 3 + 4) / 4 = 2.5
    shares = [sft_loss(logprobs[i : i + 1], mask[i : i + 1], denominator=2.0) for i in (0, 1)]
    assert_close(whole, torch.tensor(2.5))
    assert_close((shares[0] + shares[1]) / 2, whole)
    own = [sft_loss(logprobs[i : i + 1], mask[i : i + 1]) for i in (0, 1)]
    assert abs(float((own[0] + own[1]) / 2) - 2.5) > 0.4  # (1 + 3) / 2 = 2
