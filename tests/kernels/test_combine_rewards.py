"""combine_rewards: the weighted sum of several rewards, by hand."""

import pytest
import torch

from instructray.kernels import combine_rewards


def test_weighted_sum_by_hand():
    scores = torch.tensor([[1.0, 2.0, -4.0], [0.5, -1.0, 0.0]])  # (B=2, C=3)
    weights = torch.tensor([2.0, 0.5, 0.25])
    # row 0: 2 * 1 + 0.5 * 2 + 0.25 * -4 = 2 + 1 - 1 = 2
    # row 1: 2 * 0.5 + 0.5 * -1 + 0.25 * 0 = 1 - 0.5 + 0 = 0.5
    assert combine_rewards(scores, weights).tolist() == [2.0, 0.5]


def test_one_reward_with_weight_one_is_bit_identical():
    column = torch.tensor([0.1, -0.0, 3.0e-8, -7.25])
    got = combine_rewards(column[:, None], torch.tensor([1.0]))
    assert torch.equal(got.view(torch.int32), column.view(torch.int32))  # -0.0 stays -0.0


def test_a_zero_weight_drops_a_reward_and_the_dtype_is_the_scores():
    scores = torch.tensor([[1.5, 100.0]], dtype=torch.float64)
    got = combine_rewards(scores, torch.tensor([3.0, 0.0]))
    assert got.dtype == torch.float64 and got.tolist() == [4.5]


def test_shapes_must_agree():
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(2,\)"):
        combine_rewards(torch.zeros(2, 3), torch.ones(2))
    with pytest.raises(ValueError, match=r"\(4,\) and \(1,\)"):
        combine_rewards(torch.zeros(4), torch.ones(1))
