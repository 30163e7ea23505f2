"""The PPO experience loop (InstructGPT step 3), as the driver reads it:

prompts -> rollout.generate -> {reward.score, reference.logprobs, learner.logprobs_and_values}
        -> kernels: token rewards (score - kl_coef * KL), GAE, whitening
        -> learner.train -> weight sync (versioned, verified) -> kl_ctl.update -> log

The driver holds no model (a tokenizer only) and moves ObjectRefs, not tensors, between actors.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

import kernels
from actors.faults import kills_at
from actors.remote import ActorDied, RemoteError, wait_alive, wait_all
from actors.sequences import SequenceBatch, make_sequence_batch
from orchestrator.config import Config
from orchestrator.config.checks import one_critic_step
from orchestrator.output import PhaseTimer
from orchestrator.ppo.checkpoints import read_driver_state
from orchestrator.ppo.numerics import ROWS_SHOWN, batch_statistics, nonfinite_fields
from orchestrator.ppo.roles import Roles
from orchestrator.ppo.sync_check import (
    WeightSyncError,
    max_logprob_diff,
    sync_logprob_limit,
    sync_problem,
)

logger = logging.getLogger(__name__)


def compute_advantages(
    cfg: Config,
    scores: torch.Tensor,  # (B,)
    old_logprobs: torch.Tensor,  # (B, R)
    ref_logprobs: torch.Tensor,  # (B, R)
    values: torch.Tensor | None,  # (B, R)
    response_mask: torch.Tensor,  # (B, R)
    kl_coef: float,
) -> dict[str, torch.Tensor]:
    """KL-shaped token rewards, GAE advantages (whitened when asked) and returns. Without
    values (ppo.old_values = train) only the rewards and KL: the learner runs GAE."""
    p = cfg.ppo
    rewards, kl = kernels.compute_token_rewards(
        scores, old_logprobs, ref_logprobs, response_mask, kl_coef, p.kl_estimator, cfg.reward.clip
    )
    if values is None:
        return {"rewards": rewards, "kl": kl}
    advantages, returns = kernels.compute_gae(rewards, values, response_mask, p.gamma, p.lam)
    if p.whiten_advantages:
        advantages = kernels.masked_whiten(advantages, response_mask)
    return {"rewards": rewards, "kl": kl, "advantages": advantages, "returns": returns}


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


class PPOTrainer:
    """Owns the actors of one PPO run and runs its steps."""

    def __init__(self, cfg: Config, roles: Roles):
        self.cfg, self.roles = cfg, roles
        p = cfg.ppo
        self.kl_ctl = (
            kernels.AdaptiveKLController(p.kl_coef, p.kl_target, p.kl_horizon)
            if p.adaptive_kl
            else kernels.FixedKLController(p.kl_coef)
        )
        self.version = 0
        self.steps_done = 0
        self.max_diff = 0.0  # of the last weight sync
        self.skipped_steps = 0  # PPO steps skipped for non-finite numbers, in the run
        self.skip_streak = 0  # ... in a row, up to the last step
        self.skipped: dict[str, Any] | None = None  # the last step's diagnostics, when skipped
        self.at_start: dict[str, Any] = {}  # the driver's state as the current step began
        self.unsynced: dict[str, Any] | None = None  # a step's metrics while it syncs
        self.probe: list[list[int]] | None = None
        self.engine_logprobs: bool | None = None  # old_logprobs from the engines (decided once)
        if cfg.rollout.weight_sync != "object_store":
            self.open_weight_group()

    # ------------------------------------------------------------------ faults

    def _start(self, role: str, method: str, args: list[tuple]) -> tuple[list[Any], Any]:
        """Call `method` on actor i of role with args[i] -> (refs, call), call(i) redoes one."""
        actors = self._actors(role)

        def call(i: int) -> Any:
            return getattr(actors[i], method).remote(*args[i])

        return [call(i) for i in range(len(args))], call

    def _wait(self, role: str, phase: str, refs: list[Any], call: Any) -> list[Any]:
        """Results of _start's refs; an actor that died or restarted is recovered and redone."""
        name = "rollout engine" if role == "rollout" else role
        return wait_all(
            refs, phase, _names(name, refs), self.cfg.run.timeout_s, retry=self._retry(role, call)
        )

    def _retry(self, role: str, call: Any) -> Any:
        """A wait_all retry: recover actor i of role after it died, then redo its call."""

        def retry(i: int, error: Exception) -> Any:
            # An engine's weight update fails too when the learner rank that exported the weights
            # died: that is the learner's failure (rebuilt from a checkpoint), not the engine's.
            dead = getattr(error, "actor_id", None)
            ranks = [a._actor_id.hex() for a in self.roles.learner.actors]
            if dead in ranks:
                name = f"rank {ranks.index(dead)}"
                raise ActorDied(f"learner sync: {name} died", "learner sync", name) from None
            self._recover(role, i)
            return call(i)

        return retry

    def actor_restarts(self) -> int:
        """Restarts of the rollout, reward and reference actors so far, as Ray's GCS counts them
        (also those Ray made before any call noticed)."""
        from ray._private.state import actors as actor_table

        total = 0
        for role in ("rollout", "reward", "reference"):
            for actor in self._actors(role):
                total += int(actor_table(actor._actor_id.hex()).get("NumRestarts", 0))
        return total

    def rebuild_learner(self, checkpoint: Path) -> int:
        """A learner rank died: start a new group in the same placement bundles, load the
        checkpoint into it and bring the engines to its weights; -> the step to redo from."""
        from actors.learner import LearnerGroup

        self.roles.learner.shutdown()
        slots = self.roles.placement.slots["learner"]
        self.roles.learner = LearnerGroup(self.cfg, [s.options() for s in slots])
        if self.cfg.rollout.weight_sync != "object_store":
            self._reform_weight_group()  # the new rank 0 and every engine
        return self.load(checkpoint)

    def _inject(self, phase: str, step: int) -> None:
        """Test hook (actors/faults.py): kill actor 0 of a role as the step enters phase."""
        import ray

        for role in kills_at(phase, step):
            ray.kill(self._actors(role)[0], no_restart=False)

    def _actors(self, role: str) -> list[Any]:
        return {
            "rollout": self.roles.engines,
            "reward": self.roles.rewards,
            "reference": self.roles.references,
            "learner": self.roles.learner.actors,
        }[role]

    def _recover(self, role: str, i: int) -> None:
        """Wait for Ray to restart actor i of role (its constructor reloads the model); a rollout
        engine then receives the current weights, under the current version, before it serves."""
        actor = self._actors(role)[i]
        name = f"{'rollout engine' if role == 'rollout' else role} {i}"
        logger.warning("%s died or was restarted; recovering it", name)
        self._wait_alive(actor, "restart", name)
        if role == "rollout" and self.cfg.rollout.weight_sync != "object_store":
            self._reform_weight_group()  # the restarted engine left the old one
            if self.version > 0:
                self._broadcast(self.version, again=True)
        elif role == "rollout" and self.version > 0:
            weights = self.roles.learner.export_weights()
            ref = actor.update_weights.remote(self.version, weights)
            wait_all([ref], "restart", [name], self.cfg.run.start_timeout_s)

    # ------------------------------------------------------------------ checkpoints

    def save(self, folder: Path, at_step_start: bool = False) -> dict[str, Any]:
        """Write the learner's state and an HF export into folder; -> the driver's state (as of
        the current step's start with at_step_start: the learner has not trained in it)."""
        self.roles.learner.save_checkpoint(str(folder / "learner"))
        self.roles.learner.save_pretrained(str(folder / "hf"))
        start = self.at_start if at_step_start else {}
        return {
            "step": self.steps_done,
            "version": self.version,
            "kl_ctl": self.kl_ctl.state_dict(),
            "sampler": start.get("sampler") or self.roles.sampler.state_dict(),
            "probe": start["probe"] if at_step_start else self.probe,
            "skipped_steps": self.skipped_steps,
            "skip_streak": self.skip_streak,
            "engine_logprobs": self.engine_logprobs,
        }

    def load(self, folder: Path) -> int:
        """Restore a checkpoint and bring every engine to its weights; -> the next step."""
        state = read_driver_state(folder)
        self.roles.learner.load_checkpoint(str(folder / "learner"))
        self.roles.sampler.load_state_dict(state["sampler"])
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        self.probe = state["probe"]
        self.steps_done = state["step"]
        self.skipped_steps, self.skip_streak = state["skipped_steps"], state["skip_streak"]
        self.engine_logprobs = state.get("engine_logprobs")  # None: decided at the next check
        # Engines only take rising versions: after a rebuilt learner they already hold newer ones.
        self.version = max(self.version, state["version"] - 1)
        max_diff = self.sync_weights()  # the engines serve the checkpoint's weights, verified
        if self.engine_logprobs is None and self.probe is not None:  # an older checkpoint
            self.engine_logprobs = self.decide_old_logprobs(max_diff)
        logger.info(
            "ppo: engines at weight version %d (max log-prob diff %.3g)", self.version, max_diff
        )
        return self.steps_done

    # ------------------------------------------------------------------ phases

    def generate(self, step: int, prompt_idx: list[int]) -> dict[str, list]:
        """Sample rollout.samples_per_prompt responses per prompt, prompts shared by the engines."""
        r, prompts = self.cfg.rollout, self.roles.prompts
        engines = self.roles.engines
        # Balanced by load: each prompt costs its tokens plus the most its samples may add.
        loads = [len(prompts.token_ids[i]) + r.max_new_tokens for i in prompt_idx]
        parts = split_by_load(loads, len(engines))
        calls = []
        for e, part in enumerate(parts):
            sampling = {
                "n": r.samples_per_prompt,
                "max_tokens": r.max_new_tokens,
                "temperature": r.temperature,
                "top_p": r.top_p,
                "top_k": r.top_k,
                "stop": list(r.stop),
                "stop_token_ids": [self.roles.tokenizer.eos_token_id],
                "ignore_eos": r.ignore_eos,
                "seed": self.cfg.run.seed * 100_003 + step * 1009 + e,
                "version": self.version,  # a restarted engine holds older weights: it refuses
            }
            calls.append(([prompts.token_ids[prompt_idx[i]] for i in part], sampling))

        refs, call = self._start("rollout", "generate", calls)
        outs = self._wait("rollout", "generate", refs, call)
        keys = ("response_ids", "logprobs", "finish_reasons")
        merged: dict[str, list] = {k: [] for k in ("prompt", "prompt_ids", *keys)}
        for out, part in zip(outs, parts, strict=True):
            for i, local in enumerate(out["prompt_index"]):
                global_idx = prompt_idx[part[local]]
                merged["prompt"].append(prompts.texts[global_idx])
                merged["prompt_ids"].append(prompts.token_ids[global_idx])
                for k in keys:
                    merged[k].append(out[k][i])
        return merged

    def decide_old_logprobs(self, measured_diff: float) -> bool:
        """Whether the engines' sampled-token log-probs stand in for a learner forward, given
        the engine-vs-learner probe difference measured at the first check; logged, and kept
        for the run (a checkpoint holds it)."""
        p, r = self.cfg.ppo, self.cfg.rollout
        if p.old_logprobs != "auto":
            return p.old_logprobs == "rollout"
        # The engine reports raw (temperature-1) log-probs: they serve only at temperature 1,
        # and only where they equal the learner's (fp32), not where rounding parts them (bf16).
        serve = r.temperature == 1.0 and measured_diff <= p.old_logprobs_tolerance
        logger.info(
            "ppo: old_logprobs from the %s (ppo.old_logprobs auto: engine-vs-learner probe "
            "difference %.3g %s ppo.old_logprobs_tolerance = %g%s)",
            "engines" if serve else "learner",
            measured_diff,
            "<=" if measured_diff <= p.old_logprobs_tolerance else ">",
            p.old_logprobs_tolerance,
            "" if r.temperature == 1.0 else f", rollout.temperature = {r.temperature}",
        )
        return serve

    def importance_weights(self) -> bool:
        """Whether the engines' log-probs are those of the sampling distribution (temperature 1,
        no top-k / top-p), so that learner/engine ratios are importance weights."""
        r = self.cfg.rollout
        return r.temperature == 1.0 and r.top_p == 1.0 and r.top_k == -1

    def old_values_from_training(self) -> bool:
        """Whether the critic's training forward gives GAE its values (no rollout-time one)."""
        mode = self.cfg.ppo.old_values
        return mode == "train" or (mode == "auto" and one_critic_step(self.cfg))

    def truncated_importance(
        self,
        old_logprobs: torch.Tensor,  # (B, R) the learner's
        rollout_logprobs: torch.Tensor,  # (B, R) the engines'
        mask: torch.Tensor,  # (B, R)
    ) -> dict[str, Any]:
        """The engine-vs-learner gap of the sampled tokens; with ppo.tis_cap, the truncated
        importance weights that correct the policy loss for it. -> {metrics, weights?}."""
        cap = self.cfg.ppo.tis_cap
        weights, stats = kernels.truncated_is_weights(
            old_logprobs, rollout_logprobs, mask, float("inf") if cap is None else cap
        )
        metrics = {
            "rollout/logprob_diff/mean": stats["logprob_diff_mean"].item(),
            "rollout/logprob_diff/max": stats["logprob_diff_max"].item(),
        }
        if cap is None:
            return {"metrics": metrics}
        metrics["rollout/tis/clipfrac"] = stats["tis_clipfrac"].item()
        return {"metrics": metrics, "weights": weights}

    def score(
        self,
        batch: SequenceBatch,
        prompts: list[str],
        responses: list[str],
        with_logprobs: bool,
        with_values: bool = True,
    ):
        """Reward scores, reference log-probs, values and old log-probs (those asked for), in
        parallel."""
        n = batch.input_ids.shape[0]
        reward_parts = split_evenly(n, len(self.roles.rewards))
        ref_parts = split_evenly(n, len(self.roles.references))
        reward_args = [
            (
                batch.select(slice(part.start, part.stop)),
                prompts[part.start : part.stop],
                responses[part.start : part.stop],
            )
            for part in reward_parts
        ]
        ref_args = [(batch.select(slice(part.start, part.stop)),) for part in ref_parts]

        reward_refs, reward_call = self._start("reward", "score", reward_args)
        ref_refs, ref_call = self._start("reference", "logprobs", ref_args)
        # The learner call blocks; the scorers above already run meanwhile.
        learner_out = {}
        if with_logprobs or with_values:
            learner_out = self.roles.learner.logprobs_and_values(batch, with_logprobs, with_values)
        scores = self._wait("reward", "score", reward_refs, reward_call)
        ref_lp = self._wait("reference", "reference", ref_refs, ref_call)
        return torch.cat(scores), torch.cat(ref_lp), learner_out

    def open_weight_group(self) -> None:
        """Broadcast transports: learner rank 0 and every engine worker form the weight group."""
        r = self.cfg.rollout
        engines = self.roles.engines
        world = 1 + len(engines) * r.tensor_parallel_size
        host, port, refs = self.roles.learner.open_weight_group(world, r.weight_sync)
        timeout = self.cfg.run.start_timeout_s
        refs += [
            e.join_weight_group.remote(
                host, port, 1 + i * r.tensor_parallel_size, world, r.weight_sync, timeout
            )
            for i, e in enumerate(engines)
        ]
        names = ["learner rank 0"] + _names("rollout engine", engines)
        with _learner_deaths("learner weight group"):
            wait_all(refs, "weight group", names, timeout)

    def sync_weights(self) -> float:
        """Push the learner's weights to every engine (new version), then verify; -> max diff."""
        self.version += 1
        engines = self.roles.engines
        if self.cfg.rollout.weight_sync == "object_store":
            weights = self.roles.learner.export_weights()  # ObjectRef: one copy in the store
            refs = [e.update_weights.remote(self.version, weights) for e in engines]
            # A restarted engine gets this version while it recovers; then only confirm it.
            retry = self._retry("rollout", lambda i: engines[i].version.remote())
            names = _names("rollout engine", refs)
            wait_all(refs, "weight sync", names, self.cfg.run.timeout_s, retry=retry)
        else:
            try:
                self._broadcast(self.version)
            except RemoteError as e:  # a member died, or a send or receive broke with it
                if isinstance(e, ActorDied) and e.phase.startswith("learner"):
                    raise  # the learner is rebuilt, and the group with it
                self._reform_weight_group(e)
                self._broadcast(self.version, again=True)
        return self.verify_sync()

    def _broadcast(self, version: int, again: bool = False) -> None:
        """Learner rank 0 broadcasts the weights to every engine as version (again: engines
        that hold it already take it once more: a broadcast redone after a restart)."""
        engines = self.roles.engines
        refs = [e.receive_weights.remote(version, again) for e in engines]
        sends = self.roles.learner.broadcast_weights(version)
        names = _names("rollout engine", refs) + _names("learner rank", sends)
        with _learner_deaths("learner sync"):
            wait_all(refs + sends, "weight sync", names, self.cfg.run.timeout_s)

    def _reform_weight_group(self, error: Exception | None = None) -> None:
        """A member of the broadcast group died: wait for every engine to serve again (a
        restarted one, or one whose half-done receive fails by the group's timeout), then form
        a new group. Restarts stay bounded by run.max_actor_restarts."""
        if error is not None:
            logger.warning("%s; forming the weight group again", error)
        for i, engine in enumerate(self.roles.engines):
            self._wait_alive(engine, "weight group", f"rollout engine {i}")
        self.open_weight_group()

    def _wait_alive(self, actor: Any, phase: str, name: str) -> None:
        """Wait for Ray to restart actor; past run.max_actor_restarts, RestartsExhausted."""
        try:
            wait_alive(actor, phase, name, self.cfg.run.start_timeout_s)
        except RemoteError as e:
            raise RestartsExhausted(
                f"{e} (restarted up to run.max_actor_restarts = "
                f"{self.cfg.run.max_actor_restarts} times)"
            ) from None

    def verify_sync(self) -> float:
        """Check every engine against the learner; -> max |engine - learner| probe log-prob.

        Each engine must hold the current version, its loader must have taken in exactly the
        learner's weights (their fingerprints, bit for bit, every tensor), and its log-probs of
        the probe batch must agree within the dtype's rounding (sync_logprob_limit). Anything
        else stops the run (WeightSyncError) with what differs.
        """
        assert self.probe is not None
        n = len(self.roles.engines)
        refs, call = self._start("rollout", "weights_state", [(self.probe,)] * n)
        learner = self.roles.learner.weights_state(self.probe)
        engines = self._wait("rollout", "sync check", refs, call)
        limit = sync_logprob_limit(self.cfg)
        diff = 0.0
        for i, engine in enumerate(engines):
            where = f"weight sync: rollout engine {i} (version {self.version})"
            problem = sync_problem(engine, learner["fingerprints"], self.version)
            if problem:
                raise WeightSyncError(f"{where}: {problem}")
            engine_diff = max_logprob_diff(engine["logprobs"], learner["logprobs"])
            if not engine_diff <= limit:
                raise WeightSyncError(
                    f"{where} differs from the learner by {engine_diff:.3g} in log-prob on the "
                    f"probe batch (limit rollout.sync_max_logprob_diff = {limit:g} for "
                    f"{self.cfg.model.dtype})"
                )
            diff = max(diff, engine_diff)
        return diff

    def _count_skip(self, step: int, reason: str, stats: dict, prompts: list[str]) -> None:
        """Count a skipped step (reason set) or end a run of them; keep its diagnostics."""
        self.skipped = None
        if not reason:
            self.skip_streak = 0
            return
        self.skipped_steps += 1
        self.skip_streak += 1
        rows = sorted({r for s in stats.values() for r in s["rows"]})[:ROWS_SHOWN]
        self.skipped = {
            "step": step,
            "non_finite": reason,
            "statistics": stats,
            "prompts": {str(r): prompts[r] for r in rows},
        }

    # ------------------------------------------------------------------ one step

    def step(self, step: int) -> dict[str, float]:
        """One PPO step; returns its flat metrics."""
        timer, cfg = PhaseTimer(), self.cfg
        tok = self.roles.tokenizer
        start = time.perf_counter()
        # What a checkpoint of this step's start holds (should an actor fail for good before
        # the learner trains): the sampler's position and the probe batch.
        self.at_start = {"sampler": self.roles.sampler.state_dict(), "probe": self.probe}
        self._inject("generate", step)
        with timer("generate"):
            prompt_idx = self.roles.sampler.next_batch()
            gen = self.generate(step, prompt_idx)
            batch = make_sequence_batch(gen["prompt_ids"], gen["response_ids"], tok.pad_token_id)
            responses = tok.batch_decode(gen["response_ids"], skip_special_tokens=True)
        first = {}
        if self.probe is None:  # fixed for the run: the first step's first sequences
            self.probe = [
                p + r for p, r in zip(gen["prompt_ids"][:4], gen["response_ids"][:4], strict=True)
            ]
            first["weight_sync/initial_max_logprob_diff"] = initial = self.verify_sync()
            if self.engine_logprobs is None:
                self.engine_logprobs = self.decide_old_logprobs(initial)
            prompts = self.roles.prompts
            first["data/prompts"] = len(prompts)
            first.update({f"data/skipped/{k}": v for k, v in prompts.skipped.items()})
            first.update({f"data/curation/{k}": v for k, v in prompts.curation.items()})
        self._inject("score", step)
        with timer("score"):
            from_rollout, fused = self.engine_logprobs, self.old_values_from_training()
            scores, ref_logprobs, learner_out = self.score(
                batch, gen["prompt"], responses, not from_rollout, with_values=not fused
            )
            rollout_logprobs = pad_rows(gen["logprobs"], batch.response_mask)  # (B, R)
            tis: dict[str, Any] = {}
            if from_rollout:
                learner_out["old_logprobs"] = rollout_logprobs
            elif self.importance_weights():
                tis = self.truncated_importance(
                    learner_out["old_logprobs"], rollout_logprobs, batch.response_mask
                )
        with timer("advantages"):
            mask = batch.response_mask
            exp = compute_advantages(
                cfg,
                scores,
                learner_out["old_logprobs"],
                ref_logprobs,
                learner_out.get("values"),
                mask,
                self.kl_ctl.value,
            )
            fields = {"scores": scores, "ref_logprobs": ref_logprobs, **learner_out, **exp}
            stats = batch_statistics(fields, mask)
            reason = nonfinite_fields(stats)
        train_metrics: dict[str, float] = {}
        if reason:  # nothing trains on it; the weights stay as they are
            logger.warning("ppo step %d skipped: non-finite %s", step, reason)
        else:
            self._inject("train", step)
            with timer("train"):
                experience = {**vars(batch), "old_logprobs": learner_out["old_logprobs"]}
                if "weights" in tis:
                    experience["tis_weights"] = tis["weights"]
                if fused:
                    experience["rewards"] = exp["rewards"]
                else:
                    experience["old_values"] = learner_out["values"]
                    experience.update({k: exp[k] for k in ("advantages", "returns")})
                train_metrics = self.roles.learner.train(experience)
            n = train_metrics["policy/optimizer_steps"]
            if train_metrics["policy/skipped_steps"] == n:
                reason = f"loss or gradients in all {n:g} policy optimizer steps"
                logger.warning("ppo step %d skipped: non-finite %s", step, reason)
        self._count_skip(step, reason, stats, gen["prompt"])
        seq_kl = (exp["kl"] * mask).sum(-1)  # (B,)
        kl_coef = self.kl_ctl.value
        if torch.isfinite(seq_kl).all():
            self.kl_ctl.update(seq_kl.mean().item(), len(seq_kl))
        lengths = mask.sum(-1)
        metrics = {
            "step": step,
            "reward/mean": scores.mean().item(),
            "reward/std": scores.std().item() if len(scores) > 1 else 0.0,
            "kl/mean": seq_kl.mean().item(),
            "kl/token_mean": kernels.masked_mean(exp["kl"], mask).item(),
            "kl_coef": kl_coef,
            "response_length/mean": lengths.mean().item(),
            "response_length/clipped_ratio": sum(r == "length" for r in gen["finish_reasons"])
            / len(lengths),
            **train_metrics,
            **tis.get("metrics", {}),
            "train/skipped_steps": self.skipped_steps,
            **first,
        }
        # The step is done but for the sync, which a restarted engine gets anyway: should the
        # sync fail for good, this row and a checkpoint after the step keep it.
        self.steps_done, self.unsynced = step + 1, metrics
        if train_metrics:
            self._inject("sync", step)
            with timer("sync"):
                self.max_diff = self.sync_weights()
        self.unsynced = None
        elapsed = time.perf_counter() - start
        return {
            **metrics,
            "weight_sync/version": self.version,
            "actor_restarts": self.actor_restarts(),
            "weight_sync/max_logprob_diff": self.max_diff,
            **timer.metrics(),
            "timing/step": round(elapsed, 4),
            "throughput/tokens_per_s": (batch.attention_mask.sum().item()) / elapsed,
        }


def pad_rows(rows: list[list[float]], mask: torch.Tensor) -> torch.Tensor:
    """Ragged per-token values into the (B, R) response layout, 0 on padding."""
    out = torch.zeros(mask.shape, dtype=torch.float32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.float32)
    return out


class RestartsExhausted(RemoteError):
    """A rollout, reward or reference actor died more often than run.max_actor_restarts."""


@contextlib.contextmanager
def _learner_deaths(phase: str) -> Iterator[None]:
    """A dead learner rank inside: raise it as the learner's (a phase starting "learner"),
    which the run answers by rebuilding the learner from its latest checkpoint."""
    try:
        yield
    except ActorDied as e:
        if not e.name.startswith("learner"):
            raise
        raise ActorDied(f"{phase}: {e.name} died", phase, e.name) from None


def _names(role: str, refs: list) -> list[str]:
    return [f"{role} {i}" for i in range(len(refs))]
