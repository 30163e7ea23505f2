import torch
from torch.testing import assert_close

from instructray.kernels import compute_gae

F64 = torch.float64


def close(actual, expected):
    assert_close(actual, torch.as_tensor(expected, dtype=F64), atol=1e-10, rtol=0)


def random_case(seed, batch=6, length=9):
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randn(batch, length, generator=gen, dtype=F64)
    values = torch.randn(batch, length, generator=gen, dtype=F64)
    mask = torch.rand(batch, length, generator=gen) > 0.3
    mask[0] = False  # an empty row
    mask[1] = True  # a full row
    return rewards, values, mask


def loop_reference(rewards, values, mask, gamma, lam):
    """Per row: keep only valid tokens, run textbook GAE on them, scatter back."""
    batch, length = rewards.shape
    advantages = torch.zeros(batch, length, dtype=F64)
    for b in range(batch):
        steps = [t for t in range(length) if mask[b, t]]
        running = 0.0
        for i in reversed(range(len(steps))):
            t = steps[i]
            next_value = values[b, steps[i + 1]].item() if i + 1 < len(steps) else 0.0
            delta = rewards[b, t].item() + gamma * next_value - values[b, t].item()
            running = delta + gamma * lam * running
            advantages[b, t] = running
    returns = torch.where(mask, advantages + values, 0.0)
    return advantages, returns


def test_gae_hand_computed_with_a_hole():
    rewards = torch.tensor([[1.0, 0.0, 2.0], [1.0, 5.0, 2.0]], dtype=F64)
    values = torch.tensor([[0.5, 0.4, 0.3], [0.5, 9.0, 0.3]], dtype=F64)
    mask = torch.tensor([[1, 1, 1], [1, 0, 1]])
    advantages, returns = compute_gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # row 0, gamma * lam = 0.72:
    #   t=2: delta = 2 + 0 - 0.3 = 1.7;           A = 1.7
    #   t=1: delta = 0 + 0.9*0.3 - 0.4 = -0.13;   A = -0.13 + 0.72*1.7 = 1.094
    #   t=0: delta = 1 + 0.9*0.4 - 0.5 = 0.86;    A = 0.86 + 0.72*1.094 = 1.64768
    # row 1 skips t=1 (its reward 5 and value 9 are never read):
    #   t=2: A = 1.7; t=0: delta = 1 + 0.9*0.3 - 0.5 = 0.77; A = 0.77 + 0.72*1.7 = 1.994
    close(advantages, [[1.64768, 1.094, 1.7], [1.994, 0.0, 1.7]])
    # returns = A + V on valid tokens: 1.64768 + 0.5, 1.094 + 0.4, 1.7 + 0.3, 1.994 + 0.5
    close(returns, [[2.14768, 1.494, 2.0], [2.494, 0.0, 2.0]])


def test_gae_matches_loop_reference():
    rewards, values, mask = random_case(seed=0)
    advantages, returns = compute_gae(rewards, values, mask, gamma=0.97, lam=0.9)
    ref_advantages, ref_returns = loop_reference(rewards, values, mask, 0.97, 0.9)
    close(advantages, ref_advantages)
    close(returns, ref_returns)


def test_gae_masked_positions_change_nothing():
    rewards, values, mask = random_case(seed=1)
    base = compute_gae(rewards, values, mask, gamma=0.99, lam=0.95)
    for garbage in (1e3, float("nan")):
        perturbed = compute_gae(
            rewards.masked_fill(~mask, garbage),
            values.masked_fill(~mask, -garbage),
            mask,
            gamma=0.99,
            lam=0.95,
        )
        assert torch.equal(perturbed[0], base[0]) and torch.equal(perturbed[1], base[1])
    assert torch.all(base[0][~mask] == 0) and torch.all(base[1][~mask] == 0)


def test_gae_hole_equals_compacted_row():
    rewards = torch.tensor([[0.3, 7.0, -0.2, 7.0, 1.0]], dtype=F64)
    values = torch.tensor([[0.1, 7.0, 0.4, 7.0, -0.5]], dtype=F64)
    mask = torch.tensor([[1, 0, 1, 0, 1]])
    advantages, _ = compute_gae(rewards, values, mask, gamma=0.9, lam=0.7)
    keep = [0, 2, 4]
    compact, _ = compute_gae(rewards[:, keep], values[:, keep], torch.ones(1, 3), 0.9, 0.7)
    close(advantages[:, keep], compact)


def test_gae_gamma_lam_one_zero_values_gives_reverse_cumsum():
    rewards, _, mask = random_case(seed=2)
    advantages, returns = compute_gae(rewards, torch.zeros_like(rewards), mask, 1.0, 1.0)
    valid_rewards = torch.where(mask, rewards, 0.0)
    reverse_cumsum = valid_rewards.flip(-1).cumsum(-1).flip(-1)  # sum of rewards from t onwards
    close(advantages, torch.where(mask, reverse_cumsum, 0.0))
    close(returns, torch.where(mask, reverse_cumsum, 0.0))


def test_gae_lam_zero_gives_one_step_td_errors():
    rewards = torch.tensor([[1.0, -1.0, 0.5]], dtype=F64)
    values = torch.tensor([[0.2, 0.6, -0.4]], dtype=F64)
    advantages, _ = compute_gae(rewards, values, torch.ones(1, 3), gamma=0.5, lam=0.0)
    # delta_t = r_t + 0.5 * V_{t+1} - V_t:
    #   1 + 0.5*0.6 - 0.2 = 1.1; -1 + 0.5*(-0.4) - 0.6 = -1.8; 0.5 + 0 + 0.4 = 0.9
    close(advantages, [[1.1, -1.8, 0.9]])
