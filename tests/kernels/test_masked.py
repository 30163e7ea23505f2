import math

import pytest
import torch
from torch.testing import assert_close

from instructray.kernels import masked_mean, masked_sum, masked_var, masked_whiten

F64 = torch.float64


def close(actual, expected, atol=1e-10):
    assert_close(actual, torch.as_tensor(expected, dtype=F64), atol=atol, rtol=0)


X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=F64)
MASK = torch.tensor([[1, 1, 0], [0, 1, 0]], dtype=F64)


def test_masked_sum_and_mean_hand_computed():
    # sum: 1 + 2 + 5 = 8; mean: 8 / 3
    close(masked_sum(X, MASK), 8.0)
    close(masked_mean(X, MASK), 8.0 / 3.0)
    # per row: sums [3, 5], means [3/2, 5/1]
    close(masked_sum(X, MASK, dim=-1), [3.0, 5.0])
    close(masked_mean(X, MASK, dim=-1), [1.5, 5.0])


def test_masked_mean_of_empty_row_is_zero_and_ignores_nan():
    x = torch.tensor([[1.0, float("nan")], [float("inf"), 3.0]], dtype=F64)
    mask = torch.tensor([[True, False], [False, False]])
    # row 0: only 1.0 counts; row 1: nothing counts -> 0, not nan
    close(masked_mean(x, mask, dim=-1), [1.0, 0.0])
    close(masked_mean(x, mask), 1.0)


def test_masked_var_hand_computed():
    # values 1, 2, 5; mean 8/3; squared deviations (5/3)^2 + (2/3)^2 + (7/3)^2 = (25 + 4 + 49) / 9
    sq_dev = 78.0 / 9.0
    close(masked_var(X, MASK, unbiased=False), sq_dev / 3)  # 2.888...
    close(masked_var(X, MASK, unbiased=True), sq_dev / 2)  # 4.333...


def test_masked_var_needs_enough_elements():
    one = torch.tensor([[True, False, False], [False, False, False]])
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(X, one, unbiased=True)
    close(masked_var(X, one, unbiased=False), 0.0)
    with pytest.raises(ValueError, match="got 0"):
        masked_var(X, torch.zeros_like(one), unbiased=False)


def test_whiten_hand_computed():
    # mean 8/3, unbiased var 13/3: (x - 8/3) / sqrt(13/3) at the three valid positions, 0 elsewhere
    std = math.sqrt(13.0 / 3.0)
    expected = [[(1 - 8 / 3) / std, (2 - 8 / 3) / std, 0.0], [0.0, (5 - 8 / 3) / std, 0.0]]
    close(masked_whiten(X, MASK, eps=0.0), expected)


def test_whiten_gives_masked_mean_zero_var_one():
    torch.manual_seed(0)
    x = torch.randn(4, 7, dtype=F64) * 3 + 2
    mask = torch.rand(4, 7) > 0.3
    w = masked_whiten(x, mask, eps=0.0)
    close(masked_mean(w, mask), 0.0)
    close(masked_var(w, mask), 1.0)


def test_whiten_without_shift_keeps_the_mean():
    torch.manual_seed(1)
    x = torch.randn(3, 5, dtype=F64) + 4
    mask = torch.rand(3, 5) > 0.3
    w = masked_whiten(x, mask, shift_mean=False, eps=0.0)
    close(masked_mean(w, mask), masked_mean(x, mask))
    close(masked_var(w, mask), 1.0)


def test_whiten_masked_positions_change_nothing():
    torch.manual_seed(2)
    x = torch.randn(3, 6, dtype=F64)
    mask = torch.rand(3, 6) > 0.4
    w = masked_whiten(x, mask)
    for garbage in (1e6, float("nan")):
        assert torch.equal(masked_whiten(x.masked_fill(~mask, garbage), mask), w)
    assert torch.all(w[~mask] == 0)


def test_whiten_over_shards_is_the_whole_batch_whitened():
    # Rows split over two "ranks" (threads) whose sum_shards adds both ranks' sums, as an
    # all-reduce does: each rank's rows come out as the whole batch's whitening gives them.
    import threading

    torch.manual_seed(3)
    x = torch.randn(5, 4, dtype=F64) * 2 + 1
    mask = torch.rand(5, 4) > 0.3
    whole = masked_whiten(x, mask, eps=0.0)
    parts, barrier, out = [[], []], threading.Barrier(2), [None, None]

    def rank(r: int, rows: slice) -> None:
        def sum_shards(t: torch.Tensor) -> torch.Tensor:
            parts[r].append(t)
            barrier.wait()
            total = parts[0][-1] + parts[1][-1]
            barrier.wait()
            return total

        out[r] = masked_whiten(x[rows], mask[rows], eps=0.0, sum_shards=sum_shards)

    threads = [threading.Thread(target=rank, args=a) for a in ((0, slice(0, 2)), (1, slice(2, 5)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    close(torch.cat(out), whole)
    # The rows of one rank whitened alone are not the same thing.
    assert not torch.allclose(masked_whiten(x[:2], mask[:2], eps=0.0), whole[:2])
