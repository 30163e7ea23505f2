import math

import pytest
import torch
from torch.testing import assert_close

from instructray.kernels import KL_ESTIMATORS, aggregate_loss, kl_loss, kl_penalty

F64 = torch.float64


def test_kl_estimators_hand_computed():
    logprobs = torch.tensor([[-1.0, -2.0]], dtype=F64)
    ref_logprobs = torch.tensor([[-1.5, -1.5]], dtype=F64)  # log ratio: [0.5, -0.5]
    # k1: log ratio itself
    expected_k1 = [[0.5, -0.5]]
    # k2: 0.5 * 0.25 = 0.125 for both
    expected_k2 = [[0.125, 0.125]]
    # k3: exp(-0.5) - 1 + 0.5 = 0.10653065971263342; exp(0.5) - 1 - 0.5 = 0.14872127070012814
    expected_k3 = [[math.exp(-0.5) - 0.5, math.exp(0.5) - 1.5]]
    for name, expected in [("k1", expected_k1), ("k2", expected_k2), ("k3", expected_k3)]:
        actual = kl_penalty(logprobs, ref_logprobs, name)
        assert_close(actual, torch.tensor(expected, dtype=F64), atol=1e-12, rtol=0)
    assert abs(kl_penalty(logprobs, ref_logprobs, "k3")[0, 0].item() - 0.10653065971263342) < 1e-12


@pytest.mark.parametrize("estimator", KL_ESTIMATORS)
def test_kl_is_zero_when_policy_equals_reference(estimator):
    torch.manual_seed(0)
    logprobs = -torch.rand(3, 5, dtype=F64) * 4
    kl = kl_penalty(logprobs, logprobs.clone(), estimator)
    assert torch.all(kl == 0)


@pytest.mark.parametrize("estimator", ["k2", "k3"])
def test_k2_k3_are_nonnegative_and_positive_off_reference(estimator):
    torch.manual_seed(1)
    logprobs = -torch.rand(4, 8, dtype=F64) * 4
    ref_logprobs = -torch.rand(4, 8, dtype=F64) * 4
    assert torch.all(kl_penalty(logprobs, ref_logprobs, estimator) > 0)


def test_k3_mean_estimates_the_true_kl():
    # pi = [0.7, 0.3], ref = [0.4, 0.6]; KL(pi || ref) = 0.7 ln(7/4) + 0.3 ln(1/2)
    pi = torch.tensor([0.7, 0.3], dtype=F64)
    ref = torch.tensor([0.4, 0.6], dtype=F64)
    true_kl = 0.7 * math.log(0.7 / 0.4) + 0.3 * math.log(0.3 / 0.6)
    for name in KL_ESTIMATORS[::2]:  # k1 and k3 are unbiased: the exact expectation matches
        expectation = (pi * kl_penalty(pi.log(), ref.log(), name)).sum().item()
        assert abs(expectation - true_kl) < 1e-12, name


def test_unknown_estimator_names_it_and_the_valid_ones():
    x = torch.zeros(1, 1)
    with pytest.raises(ValueError, match=r"'k4'.*k1, k2, k3"):
        kl_penalty(x, x, "k4")


# ---------------------------------------------------------------- KL in the loss


def test_kl_loss_value_and_gradient_hand_computed():
    # log pi - log ref = d: [0.5, -0.5]; the third token is masked (padding at -inf)
    ref_logprobs = torch.tensor([[-1.5, -1.5, -2.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 0]])
    cases = {
        # k1 = d, d/dlogp = 1
        "k1": ([0.5, -0.5], [1.0, 1.0]),
        # k2 = d^2 / 2 = 0.125, d/dlogp = d
        "k2": ([0.125, 0.125], [0.5, -0.5]),
        # k3 = exp(-d) + d - 1: exp(-0.5) - 0.5, exp(0.5) - 1.5; d/dlogp = 1 - exp(-d):
        # 1 - exp(-0.5) = 0.3934693402873666, 1 - exp(0.5) = -0.6487212707001282
        "k3": (
            [math.exp(-0.5) - 0.5, math.exp(0.5) - 1.5],
            [1 - math.exp(-0.5), 1 - math.exp(0.5)],
        ),
    }
    for name, (value, grad) in cases.items():
        logprobs = torch.tensor([[-1.0, -2.0, -math.inf]], dtype=F64, requires_grad=True)
        kl = kl_loss(logprobs, ref_logprobs, mask, name)
        assert_close(kl, torch.tensor([value + [0.0]], dtype=F64), atol=1e-12, rtol=0)
        kl.sum().backward()
        # the masked -inf log-prob gets a 0 gradient, not a NaN
        assert_close(logprobs.grad, torch.tensor([grad + [0.0]], dtype=F64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("estimator", KL_ESTIMATORS)
def test_kl_loss_is_zero_with_zero_gradient_at_the_reference(estimator):
    gen = torch.Generator().manual_seed(2)
    ref_logprobs = -torch.rand(3, 5, generator=gen, dtype=F64) * 4
    mask = torch.rand(3, 5, generator=gen) > 0.3
    logprobs = ref_logprobs.clone().requires_grad_()
    kl = kl_loss(logprobs, ref_logprobs, mask, estimator)
    loss = aggregate_loss(kl, mask, "token_mean")
    loss.backward()
    assert torch.all(kl == 0) and loss.item() == 0
    # k1's gradient is 1 per token whatever the ratio: only k2 and k3 vanish at the reference
    tokens = mask.to(F64)
    expected = tokens / tokens.sum() if estimator == "k1" else torch.zeros_like(tokens)
    assert_close(logprobs.grad, expected, atol=1e-12, rtol=0)
