"""The driver's pure steps from samples to the learner's batch, against hand-computed values."""

import pytest
import torch

from instructray.actors.sequences import make_sequence_batch
from instructray.orchestrator.config import load_config
from instructray.orchestrator.ppo.experience import (
    Rollout,
    make_experience,
    pad_rows,
    split_by_load,
    split_evenly,
    step_metrics,
)


def _one_row():
    batch = make_sequence_batch([[5, 6]], [[7, 8]], pad_id=0)  # R = 2, both tokens real
    scored = {
        "scores": torch.tensor([2.0]),
        "ref_logprobs": torch.tensor([[-1.5, -1.0]]),
        "old_logprobs": torch.tensor([[-1.0, -1.0]]),
        "values": torch.tensor([[0.5, 1.0]]),
    }
    return batch, scored


def test_make_experience_on_the_driver_hand_computed():
    cfg = load_config(None, ["--ppo.whiten_advantages=false"])  # gamma 1, lambda 0.95, k1
    batch, scored = _one_row()
    exp, fields = make_experience(cfg, batch, scored, kl_coef=0.1, in_learner=False)
    # kl = old - ref = [0.5, 0]; rewards = -0.1 * kl + [0, score 2] = [-0.05, 2.0]
    assert fields["kl"].tolist() == [[0.5, 0.0]]
    assert exp.rewards is None and fields["rewards"][0].tolist() == pytest.approx([-0.05, 2.0])
    # delta_1 = 2 - 1 = 1; delta_0 = -0.05 + 1.0 - 0.5 = 0.45; A = [0.45 + 0.95 * 1, 1]
    assert exp.advantages[0].tolist() == pytest.approx([1.4, 1.0])
    assert exp.returns[0].tolist() == pytest.approx([1.9, 2.0])  # A + V
    assert exp.old_values is scored["values"] and not exp.gae_in_learner
    assert list(fields) == ["scores", "ref_logprobs", "old_logprobs", "values", "rewards", "kl"] + [
        "advantages",
        "returns",
    ]


def test_make_experience_leaves_gae_to_the_learner():
    cfg = load_config(None, [])
    batch, scored = _one_row()
    del scored["values"]  # no rollout-time critic forward in this flow
    weights = torch.tensor([[1.0, 0.5]])
    exp, fields = make_experience(cfg, batch, scored, 0.1, in_learner=True, tis_weights=weights)
    assert exp.gae_in_learner and exp.advantages is None and exp.returns is None
    assert exp.rewards[0].tolist() == pytest.approx([-0.05, 2.0]) and exp.tis_weights is weights
    assert set(exp.tensors()) == {"old_logprobs", "rewards", "tis_weights"}


def test_make_experience_with_a_critic_free_estimator_hand_computed():
    # Two prompts, two samples each, in the order the engines returned them: ids, not places.
    batch = make_sequence_batch([[5]] * 4, [[7, 8], [7], [9, 9], [8]], pad_id=0)  # R = 2
    scored = {
        "scores": torch.tensor([1.0, 3.0, 2.0, 2.0]),
        "ref_logprobs": torch.full((4, 2), -1.5),
        "old_logprobs": torch.full((4, 2), -1.0),  # kl = 0.5 on every real token
    }
    groups = torch.tensor([4, 9, 9, 4])  # rows 0 and 3 share a prompt, rows 1 and 2 another
    cfg = load_config(None, ["--ppo.estimator=dr_grpo", "--ppo.kl_loss_coef=0.1"])
    exp, fields = make_experience(cfg, batch, scored, 0.2, False, group_ids=groups)
    # Row sums of the token rewards: 1 - 0.2 * (0.5 + 0.5) = 0.8, 3 - 0.1 = 2.9, 2 - 0.2 = 1.8,
    # 2 - 0.1 = 1.9; group means: rows 0, 3: 1.35; rows 1, 2: 2.35.
    want = [[-0.55, -0.55], [0.55, 0.0], [-0.55, -0.55], [0.55, 0.0]]
    assert exp.advantages.tolist() == [pytest.approx(row) for row in want]
    assert exp.old_values is None and exp.returns is None and not exp.gae_in_learner
    assert exp.ref_logprobs is scored["ref_logprobs"]  # for the KL term of the loss
    assert fields["advantages"] is exp.advantages
    # KL only in the loss: the rewards are the scores alone, and the advantages follow them.
    cfg = load_config(None, ["--ppo.estimator=rloo", "--ppo.kl_in_reward=false"])
    exp, fields = make_experience(cfg, batch, scored, 0.2, False, group_ids=groups)
    assert fields["kl"][0].tolist() == [0.5, 0.5] and fields["rewards"].sum().item() == 8.0
    # rloo: r - mean of the others: rows 0, 3: 1 - 2, 2 - 1; rows 1, 2: 3 - 2, 2 - 3.
    assert exp.advantages[:, 0].tolist() == [-1.0, 1.0, -1.0, 1.0]
    assert exp.ref_logprobs is None  # ppo.kl_loss_coef 0


def test_pad_rows_puts_ragged_rows_into_the_response_layout():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert pad_rows([[-0.5, -1.5], [-2.0]], mask).tolist() == [[-0.5, -1.5, 0.0], [-2.0, 0, 0]]


def test_step_metrics_hand_computed():
    batch = make_sequence_batch([[5], [5]], [[7, 8], [9]], pad_id=0)  # lengths 2 and 1
    rollout = Rollout(
        torch.tensor([0, 0]),
        ["p", "p"],
        [[5], [5]],
        [[7, 8], [9]],
        ["a", "b"],
        ["stop", "length"],
        batch,
        torch.zeros(2, 2),
    )
    kl = torch.tensor([[0.2, 0.4], [0.3, 9.0]])  # 9.0 sits on padding: not counted
    m = step_metrics(3, rollout, torch.tensor([1.0, 3.0]), kl, kl_coef=0.05)
    assert m["step"] == 3 and m["reward/mean"] == 2.0
    assert m["reward/std"] == pytest.approx(2**0.5)
    assert m["kl/mean"] == pytest.approx((0.6 + 0.3) / 2)  # per sequence, summed over tokens
    assert m["kl/token_mean"] == pytest.approx(0.9 / 3)
    assert m["response_length/mean"] == 1.5 and m["response_length/clipped_ratio"] == 0.5
    assert m["kl_coef"] == 0.05


def test_split_by_load_balances_tokens_and_leaves_no_engine_idle():
    assert split_by_load([1] * 8, 2) == split_evenly(8, 2)
    assert split_by_load([1] * 5, 2) == [range(0, 3), range(3, 5)]
    # one long prompt: its engine takes fewer prompts
    assert split_by_load([10, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], 2) == [range(0, 1), range(1, 11)]
    assert split_by_load([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 10], 2) == [range(0, 10), range(10, 11)]
    assert split_by_load([100, 1, 1], 3) == [range(0, 1), range(1, 2), range(2, 3)]
    parts = split_by_load([3, 5, 2, 8, 1, 4, 6, 2], 3)
    assert [len(p) for p in parts] and all(len(p) for p in parts)
    assert sorted(i for p in parts for i in p) == list(range(8))
