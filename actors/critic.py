"""The PPO critic on a learner rank, and the optimizer step both of a rank's models take.

Only `ppo.estimator: gae` has a critic; the critic-free estimators (GRPO, RLOO, REINFORCE++)
build none, so no critic weights, gradients or optimizer state take memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from actors.engine import TokenValues, build_engine, engine_inputs, load_model
from kernels import compute_gae, value_loss
from orchestrator.config import Config, uses_reward_model

if TYPE_CHECKING:
    from actors.learner import MicroBatch


def backward_and_step(
    engine: Any, loss: torch.Tensor, name: str, stats: dict[str, float]
) -> dict[str, float]:
    """Backward of one micro-batch; at a boundary the optimizer steps, or skips the step when
    any rank's gradients are not finite (the decision is the group's: every rank skips)."""
    boundary = engine.is_gradient_accumulation_boundary()  # set by the caller
    if not torch.isfinite(loss):
        # Every gradient this loss reaches turns non-finite (NaN * 0 is NaN), so the
        # group's gradient check sees it whatever the loss is made of.
        loss = loss * float("nan")
    engine.backward(loss)  # scales by 1 / grad_accum; averages gradients over the ranks
    engine.step()  # optimizer step (clipped) and warm-up only at a boundary
    if boundary:
        stats[f"{name}/optimizer_steps"] = 1.0
        applied = engine.was_step_applied()
        stats[f"{name}/skipped_steps"] = 0.0 if applied else 1.0
        norm = engine.get_global_grad_norm()  # None under ZeRO-0 fp32
        if applied and norm is not None:
            stats[f"{name}/grad_norm"] = float(norm)
    return stats


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

    def values(self, mb: Any) -> torch.Tensor:
        """Values of a micro-batch's response tokens. -> (b, R)"""
        return self.engine(*engine_inputs(mb))

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
