"""One optimizer step of a learner rank's model (the policy's, or the critic's): the micro-batch
it is cut into and the backward and step of each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from instructray.actors.sequences import SequenceBatch


@dataclass
class MicroBatch:
    """One micro-batch of a rank's rows in a train call."""

    batch: SequenceBatch  # (b, P + R) rows
    rows: torch.Tensor  # (b,) their indices into the rank's rows
    share: torch.Tensor  # 0-d: the denominator of its loss (LearnerActor._cut)
    last: bool  # the last of its minibatch: the optimizer steps after it


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
