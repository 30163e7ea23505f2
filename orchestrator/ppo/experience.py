"""From samples to the batch the learner trains on: the rollout of one step, the KL-shaped token
rewards and advantages made of it (each equation one call into kernels/), the step's rollout
metrics, and how rows are split among actors."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from instructray import kernels
from instructray.actors.sequences import Experience, SequenceBatch
from instructray.orchestrator.config import Config


@dataclass
class Rollout:
    """One step's samples: B = prompts x rollout.samples_per_prompt rows, in engine order."""

    group_ids: torch.Tensor  # (B,) long: the step's id of each sample's prompt (its group)
    prompts: list[str]  # B prompt texts, one per sample
    prompt_ids: list[list[int]]  # B prompts' token ids
    response_ids: list[list[int]]  # B sampled responses' token ids
    responses: list[str]  # B responses, decoded
    finish_reasons: list[str]  # B: "stop" or "length"
    batch: SequenceBatch  # the shared layout, (B, P + R)
    logprobs: torch.Tensor  # (B, R) the engines' log-probs of the sampled tokens, 0 on padding
    versions: torch.Tensor | None = None  # (B,) long: the weight version that drew each sample
    engine_seconds: dict[int, float] = field(default_factory=dict)  # engine id -> generating s
    engine_tokens: dict[int, int] = field(default_factory=dict)  # engine id -> tokens sampled
    columns: list[dict] = field(default_factory=list)  # B: each sample's prompt columns


def make_experience(
    cfg: Config,
    batch: SequenceBatch,
    scored: dict[str, torch.Tensor],  # scores (B,); ref_logprobs, old_logprobs[, values] (B, R)
    kl_coef: float,
    in_learner: bool,
    tis_weights: torch.Tensor | None = None,  # (B, R)
    group_ids: torch.Tensor | None = None,  # (B,) the prompt (group) of each row
) -> tuple[Experience, dict[str, torch.Tensor]]:
    """Token rewards (the score, minus kl_coef x KL with ppo.kl_in_reward), then advantages by
    ppo.estimator: GAE (whitened when asked) and returns, unless GAE runs in the learner
    (in_learner: it gets the rewards), or a critic-free estimator's. -> the Experience, and
    every field by name (the scored ones, rewards, kl, ...) for the non-finite check and
    metrics."""
    p, mask = cfg.ppo, batch.response_mask
    # None: the policy's training forward gives them (ppo.old_logprobs train), and the rewards
    # hold no KL; the KL is then 0 here and measured after the step (trained_kl)
    old_logprobs = scored.get("old_logprobs")
    rewards, kl = kernels.compute_token_rewards(
        scored["scores"],
        scored["ref_logprobs"] if old_logprobs is None else old_logprobs,
        scored["ref_logprobs"],
        mask,
        kl_coef if p.kl_in_reward else 0.0,
        p.kl_estimator,
        cfg.reward.clip,
    )
    fields = {**scored, "rewards": rewards, "kl": kl}
    extra = {"tis_weights": tis_weights}
    if p.kl_loss_coef > 0:
        extra["ref_logprobs"] = scored["ref_logprobs"]
    if in_learner:
        return Experience(batch, old_logprobs, rewards=rewards, **extra), fields
    if p.estimator != "gae":
        advantages = kernels.estimator_advantages(rewards, mask, group_ids, p.estimator)
        fields["advantages"] = advantages
        return Experience(batch, old_logprobs, advantages=advantages, **extra), fields
    values = scored["values"]
    advantages, returns = kernels.compute_gae(rewards, values, mask, p.gamma, p.lam)
    if p.whiten_advantages:
        advantages = kernels.masked_whiten(advantages, mask)
    fields |= {"advantages": advantages, "returns": returns}
    experience = Experience(batch, old_logprobs, None, values, advantages, returns, **extra)
    return experience, fields


def trained_kl(cfg: Config, batch: SequenceBatch, old_logprobs, ref_logprobs) -> torch.Tensor:
    """The per-token KL to the reference (B, R) of old log-probs that came after the step (the
    training forward's own), as make_experience measures it before a step."""
    zero = torch.zeros(batch.response_mask.shape[0])
    args = (old_logprobs, ref_logprobs, batch.response_mask, 0.0, cfg.ppo.kl_estimator)
    return kernels.compute_token_rewards(zero, *args)[1]


def step_metrics(
    step: int, rollout: Rollout, scores: torch.Tensor, kl: torch.Tensor, kl_coef: float
) -> dict[str, float]:
    """The rollout's own metrics of a step: reward, KL to the reference, response lengths."""
    mask = rollout.batch.response_mask
    seq_kl, lengths = (kl * mask).sum(-1), mask.sum(-1)  # (B,) each
    return {
        "step": step,
        "reward/mean": scores.mean().item(),
        "reward/std": scores.std().item() if len(scores) > 1 else 0.0,
        "kl/mean": seq_kl.mean().item(),
        "kl/token_mean": kernels.masked_mean(kl, mask).item(),
        "kl_coef": kl_coef,
        "response_length/mean": lengths.mean().item(),
        "response_length/clipped_ratio": sum(r == "length" for r in rollout.finish_reasons)
        / len(lengths),
    }


def engine_rates(rollout: Rollout) -> dict[str, float]:
    """Each engine's tokens/s in the generate call that drew the rollout."""
    return {
        f"throughput/engine_{i}/tokens_per_s": rollout.engine_tokens[i] / max(seconds, 1e-9)
        for i, seconds in rollout.engine_seconds.items()
    }


def staleness(version: int, rollout: Rollout) -> dict[str, float]:
    """How many weight versions the learner's weights are ahead of those that drew each sample."""
    lag = (version - rollout.versions).float() if rollout.versions is not None else torch.zeros(1)
    return {"rollout/staleness/mean": lag.mean().item(), "rollout/staleness/max": lag.max().item()}


def split_by_load(loads: list[float], parts: int) -> list[range]:
    """Contiguous ranges of items, one per part, with near-equal total load and none empty
    (while there are items enough): cut where the running total is nearest each k/parts share."""
    n, total = len(loads), float(sum(loads))
    cuts, running, i = [0], 0.0, 0
    for k in range(1, parts):
        target = total * k / parts
        # Advance while taking the next item brings the running total nearer the target, and
        # leave at least one item for each later part.
        while i < n - (parts - k) and abs(running + loads[i] - target) <= abs(running - target):
            running += loads[i]
            i += 1
        if i == cuts[-1] and i < n - (parts - k):  # never an empty part when avoidable
            running += loads[i]
            i += 1
        cuts.append(i)
    cuts.append(n)
    return [range(a, b) for a, b in zip(cuts, cuts[1:], strict=False)]


def split_evenly(n: int, parts: int) -> list[range]:
    """n items into `parts` contiguous ranges whose sizes differ by at most one."""
    base, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        out.append(range(start, start + size))
        start += size
    return out


def pad_rows(rows: list[list[float]], mask: torch.Tensor) -> torch.Tensor:
    """Ragged per-token values into the (B, R) response layout, 0 on padding."""
    out = torch.zeros(mask.shape, dtype=torch.float32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.float32)
    return out
