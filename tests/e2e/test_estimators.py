"""The critic-free estimators train the tiny task: real Ray, vLLM (CPU build), DeepSpeed.

One set of actors serves every estimator (they build the same learner: a policy, no critic):
each run starts from the same checkpoint (policy weights, AdamW state, sampler, KL controller,
the engines synced to it), so the estimators see the same prompts and differ only in their
advantages. Each trains 20 steps against the tiny reward model, with KL in the reward and in
the loss; its score must rise (the mean of the last 10 steps above the first 10)."""

from __future__ import annotations

import pytest
from testdata import ppo_tiny_config

from instructray.kernels import CRITIC_FREE_ESTIMATORS
from instructray.orchestrator.config import needs_critic
from instructray.orchestrator.ppo.checkpoints import Checkpoints
from instructray.orchestrator.ppo.roles import Roles
from instructray.orchestrator.ppo.trainer import PPOTrainer

pytestmark = pytest.mark.e2e

STEPS = 20


@pytest.fixture(scope="module")
def runs(ray_local, tiny_dir, tmp_path_factory):
    """estimator -> its 20 steps' metrics, and the checkpoint they all started from."""
    out = tmp_path_factory.mktemp("estimators")
    cfg = ppo_tiny_config(
        tiny_dir,
        out,
        "--ppo.estimator=grpo",
        "--ppo.kl_loss_coef=0.05",
        "--run.steps=20",
        "--model.dtype=float32",  # the old log-probs' comparison is to fp32 rounding
    )
    roles = Roles.start(cfg)
    try:
        trainer = PPOTrainer(cfg, roles)
        start = Checkpoints(out, keep_last=1).save(0, trainer.save)  # where every run starts
        rows = {}
        for estimator in CRITIC_FREE_ESTIMATORS:
            trainer.cfg.ppo.estimator = estimator  # the driver's choice; the learner is the same
            agg = "seq_mean_token_sum_norm" if estimator == "dr_grpo" else "token_mean"
            roles.learner.update_settings({"ppo.loss_agg": agg})  # Dr. GRPO's constant
            trainer.load(start)
            rows[estimator] = [trainer.step(step) for step in range(STEPS)]
        # GRPO without KL in the reward, one step from where the last run ended (the policy away
        # from the reference): old log-probs from a learner forward before the step, then from
        # the training forward itself (ppo.old_logprobs).
        moved = Checkpoints(tmp_path_factory.mktemp("moved"), keep_last=1).save(0, trainer.save)
        trainer.cfg.ppo.estimator, trainer.cfg.ppo.kl_in_reward = "grpo", False
        roles.learner.update_settings({"ppo.loss_agg": "token_mean"})
        once = {}
        for mode in ("learner", "train"):
            trainer.cfg.ppo.old_logprobs = mode
            trainer.load(moved)
            once[mode] = trainer.step(0)
        return {"rows": rows, "start": start, "once": once}
    finally:
        roles.shutdown()


@pytest.mark.parametrize("estimator", CRITIC_FREE_ESTIMATORS)
def test_each_estimator_raises_the_reward_in_20_steps(runs, estimator):
    rows = runs["rows"][estimator]
    scores = [r["reward/mean"] for r in rows]
    first, last = sum(scores[:10]) / 10, sum(scores[10:]) / 10
    assert last > first, (estimator, scores)
    assert all(r["train/skipped_steps"] == 0 for r in rows)
    assert all(r["policy/kl_loss"] >= 0 for r in rows)  # k3 is never negative
    assert rows[-1]["policy/kl_loss"] > 0  # the policy moved from the reference


def test_no_critic_is_built_placed_trained_or_checkpointed(runs):
    first = runs["rows"]["grpo"][0]
    assert first["learner/critic_parameters"] == 0 and first["learner/policy_parameters"] > 0
    for rows in runs["rows"].values():
        assert not [k for r in rows for k in r if k.startswith("value/")]
    learner = runs["start"] / "learner"
    assert (learner / "policy").is_dir() and not (learner / "critic").exists()
    assert not needs_critic(ppo_tiny_config("", runs["start"], "--ppo.estimator=rloo"))


def test_old_logprobs_of_the_training_forward_make_the_learner_forwards_step(runs):
    """ppo.old_logprobs train skips the policy forward of the scoring phase: the step's loss, its
    gradient's norm, and its KL to the reference equal those of a learner forward
    before it (tests/e2e/test_invariance.py compares the updates weight by weight)."""
    before, after = runs["once"]["learner"], runs["once"]["train"]
    assert before["reward/mean"] == after["reward/mean"]  # the same samples
    assert set(after) == set(before)  # the same metrics
    for key in (
        "policy/loss",
        "policy/grad_norm",
        "kl/mean",
        "kl/token_mean",
        "entropy/mean",
    ):  # fp32 rounding of ratios that are 1 to within 1e-6
        assert abs(after[key] - before[key]) <= 1e-4 * max(1e-3, abs(before[key])), key
    assert after["policy/approx_kl"] == 0.0  # pi / pi_old is 1 exactly
    assert before["kl/mean"] > 0 and before["policy/grad_norm"] > 0  # not trivially equal
