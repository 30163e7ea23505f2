"""The PPO critic on a learner rank.

Only `ppo.estimator: gae` has a critic; the critic-free estimators (GRPO, RLOO, REINFORCE++)
build none, so no critic weights, gradients or optimizer state take memory.
"""

from __future__ import annotations

from typing import Any

import torch

from instructray.actors.learner.engine import TokenValues, build_engine, engine_inputs, load_model
from instructray.actors.learner.step import MicroBatch, backward_and_step
from instructray.actors.sequences import SequenceBatch, to_width
from instructray.kernels import compute_gae, value_loss
from instructray.orchestrator.config import Config, uses_reward_model


class Critic:
    """The value model in its DeepSpeed engine: rollout-time values and its training step."""

    def __init__(self, cfg: Config, engine_args: tuple[Any, ...]):
        from transformers import AutoModelForSequenceClassification

        self.cfg = cfg
        learner, m = cfg.learner, cfg.model
        # It starts from the reward model (InstructGPT), or from the policy with a new head.
        path = m.reward if m.reward and uses_reward_model(cfg) else m.policy
        lora = "SEQ_CLS" if learner.critic_lora else ""  # adapters and the value head train
        value_model = load_model(
            AutoModelForSequenceClassification, path, learner, m, lora, num_labels=1
        )
        self.engine = build_engine(
            TokenValues(value_model), learner, learner.critic_lr, *engine_args
        )

    def values(self, mb: SequenceBatch) -> torch.Tensor:
        """Values of a micro-batch's response tokens (its padding trimmed). -> (b, R)"""
        return to_width(self.engine(*engine_inputs(mb.trimmed())), mb.response_mask.shape[1])

    def step(
        self, part: MicroBatch, exp: dict[str, torch.Tensor], gae_in_learner: bool
    ) -> dict[str, float]:
        """Critic forward and backward of one micro-batch; DeepSpeed steps at its last.

        Given token rewards instead of values (ppo.old_values = train), this forward's values
        are the rollout's: GAE runs here and fills exp's advantages (not yet whitened)."""
        p, mb, rows = self.cfg.ppo, part.batch, part.rows
        self.engine.set_gradient_accumulation_boundary(part.last)
        values = self.values(mb)  # (b, R)
        if gae_in_learner:
            old_values = values.detach()
            advantages, returns = compute_gae(
                exp["rewards"][rows], old_values, mb.response_mask, p.gamma, p.lam
            )
            exp["advantages"][rows] = advantages
        else:
            old_values, returns = exp["old_values"][rows], exp["returns"][rows]
        loss, vf_stats = value_loss(
            values,
            old_values,
            returns,
            mb.response_mask,
            p.value_clip,
            p.loss_agg,
            part.share,
            self.cfg.rollout.max_new_tokens,
        )
        stats = {"value/loss": loss.item(), "value/clipfrac": vf_stats["vf_clipfrac"].item()}
        return backward_and_step(self.engine, p.vf_coef * loss, "value", stats)
