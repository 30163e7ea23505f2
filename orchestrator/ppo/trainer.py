"""The PPO experience loop (InstructGPT step 3), as the driver reads it, one step:

prompts -> rollout.generate -> {reward.score, reference.logprobs, learner.logprobs_and_values}
        -> kernels: token rewards (score - kl_coef * KL), GAE, whitening (or GAE in the learner)
        -> learner.train -> kl_ctl.update -> weight sync (versioned, verified) -> log

The driver holds no model (a tokenizer only). Actor calls with recovery live in calls.py, the
weight sync in weights.py; every equation is one call into kernels/.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from instructray import kernels
from instructray.actors.learner.actor import TRAIN_LOGPROBS
from instructray.actors.remote import RemoteError
from instructray.orchestrator.config import Config
from instructray.orchestrator.config.checks import (
    gae_in_learner,
    needs_critic,
    old_logprobs_in_train,
    reward_sources,
)
from instructray.orchestrator.config.renames import RENAMING_PICKLE
from instructray.orchestrator.output import PhaseTimer, RunFolder
from instructray.orchestrator.output.scale_requests import ScaleRequests
from instructray.orchestrator.ppo import generation
from instructray.orchestrator.ppo.calls import RestartsExhausted, RoleCalls
from instructray.orchestrator.ppo.checkpoints import read_driver_state
from instructray.orchestrator.ppo.experience import (
    Rollout,
    engine_rates,
    make_experience,
    split_evenly,
    staleness,
    step_metrics,
    trained_kl,
)
from instructray.orchestrator.ppo.generation import Generating
from instructray.orchestrator.ppo.numerics import ROWS_SHOWN, batch_statistics, nonfinite_fields
from instructray.orchestrator.ppo.offpolicy import (
    decide_old_logprobs,
    importance_weights,
    truncated_importance,
)
from instructray.orchestrator.ppo.pool import EnginePool
from instructray.orchestrator.ppo.roles import Roles
from instructray.orchestrator.ppo.weights import WeightSync

__all__ = ["PPOTrainer", "RestartsExhausted"]

logger = logging.getLogger(__name__)

AHEAD_FILE = "ahead.pt"  # in a checkpoint: the samples drawn for its next step


class PPOTrainer:
    """Owns the actors of one PPO run and runs its steps."""

    def __init__(self, cfg: Config, roles: Roles, folder: RunFolder | None = None):
        """folder: the run's, where scale requests arrive and placement.json is kept."""
        self.cfg, self.roles = cfg, roles
        p = cfg.ppo
        self.kl_ctl = (
            kernels.AdaptiveKLController(p.kl_coef, p.kl_target, p.kl_horizon)
            if p.adaptive_kl
            else kernels.FixedKLController(p.kl_coef)
        )
        self.gae_in_learner = gae_in_learner(cfg)  # the data flow, decided once for the run
        self.values = needs_critic(cfg) and not self.gae_in_learner  # rollout-time values
        self.calls = RoleCalls(cfg, roles, on_restart=self._on_restart)
        self.weights = WeightSync(cfg, roles, self.calls)
        self.pool = EnginePool(
            cfg,
            roles,
            self.weights,
            ScaleRequests(folder.path) if folder is not None else None,
            lambda: folder and folder.write_json("placement.json", roles.placement.nodes()),
        )
        self.calls.lost = self.pool.lost
        self.staleness = cfg.rollout.max_staleness  # 0: lockstep; >= 1: one batch ahead
        self.generating: Generating | None = None  # the next step's samples, being drawn
        self.ahead: Rollout | None = None  # the next step's samples, drawn
        self.steps_done = 0
        self.max_diff = 0.0  # of the last weight sync
        self.skipped_steps = 0  # PPO steps skipped for non-finite numbers, in the run
        self.skip_streak = 0  # ... in a row, up to the last step
        self.skipped: dict[str, Any] | None = None  # the last step's diagnostics, when skipped
        self.at_start: dict[str, Any] = {}  # the driver's state as the current step began
        self.unsynced: dict[str, Any] | None = None  # a step's metrics while it syncs
        # old_logprobs from the engines (decided once, at the first check; not where the
        # policy's training forward gives them), or from a learner forward
        self.engine_logprobs: bool | None = False if self.train_logprobs else None
        if self.train_logprobs:
            logger.info("ppo: old_logprobs from the policy's training forward (one step a batch)")
        if self.weights.broadcast:
            self.weights.open_group()

    @property
    def train_logprobs(self) -> bool:
        """Whether the policy's training forward gives the old log-probs (no policy forward at
        scoring time): config.checks.old_logprobs_in_train."""
        return old_logprobs_in_train(self.cfg)

    def _on_restart(self, role: str, actor: Any) -> None:
        if role == "rollout":  # the restarted engine loaded the base model: bring it up to date
            self.weights.resend(actor)

    def rebuild_learner(self, checkpoint: Path) -> int:
        """A learner rank died: start a new group in the same placement bundles, load the
        checkpoint into it and bring the engines to its weights; -> the step to redo from."""
        from instructray.actors.learner.group import LearnerGroup

        self.roles.learner.shutdown()
        slots = self.roles.placement.slots["learner"]
        self.roles.learner = LearnerGroup(
            self.cfg, [s.options() for s in slots], self.roles.pretrain
        )
        if self.weights.broadcast:
            self.weights.reform()  # the new rank 0 and every engine
        return self.load(checkpoint)

    # ------------------------------------------------------------------ checkpoints

    def save(self, folder: Path, at_step_start: bool = False) -> dict[str, Any]:
        """Write the learner's state and an HF export into folder; -> the driver's state (as of
        the current step's start with at_step_start: the learner has not trained in it)."""
        self.roles.learner.save_checkpoint(str(folder / "learner"))
        self.roles.learner.save_pretrained(str(folder / "hf"))
        start = self.at_start if at_step_start else {}
        return {
            "step": self.steps_done,
            "version": self.weights.version,
            "kl_ctl": self.kl_ctl.state_dict(),
            "sampler": start.get("sampler") or self.roles.sampler.state_dict(),
            "probe": start["probe"] if at_step_start else self.weights.probe,
            "skipped_steps": self.skipped_steps,
            "skip_streak": self.skip_streak,
            "engine_logprobs": self.engine_logprobs,
            "ahead_lag": self._save_ahead(folder, at_step_start),
        }

    def _save_ahead(self, folder: Path, at_step_start: bool) -> int | None:
        """The samples drawn ahead for the checkpoint's next step go into it (a resumed run
        trains on the same samples); -> how many versions they lag the checkpoint's weights."""
        try:
            ahead = self.at_start.get("ahead") if at_step_start else self.collect_ahead()
        except RemoteError as e:  # the engines failed: a resumed run draws them again
            logger.warning("ppo: the samples drawn ahead are lost (%s); drawn again on resume", e)
            return None
        if ahead is None or ahead.versions is None:
            return None
        torch.save(ahead, folder / AHEAD_FILE)
        return self.weights.version - int(ahead.versions.min())

    def load(self, folder: Path) -> int:
        """Restore a checkpoint and bring every engine to its weights; -> the next step."""
        state = read_driver_state(folder)
        self.roles.learner.load_checkpoint(str(folder / "learner"))
        self.roles.sampler.load_state_dict(state["sampler"])
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        self.weights.probe = state["probe"]
        self.steps_done = state["step"]
        self.skipped_steps, self.skip_streak = state["skipped_steps"], state["skip_streak"]
        # auto's decision, kept; None: decided at the next check. A mode set by name wins.
        self.engine_logprobs = state.get("engine_logprobs")
        if self.cfg.ppo.old_logprobs != "auto" or self.train_logprobs:
            self.engine_logprobs = self.cfg.ppo.old_logprobs == "rollout"
        self.generating = None  # drawn for the run that failed: dropped
        # Engines only take rising versions: after a rebuilt learner they already hold newer ones.
        self.weights.version = max(self.weights.version, state["version"] - 1)
        max_diff = self.weights.sync()  # the engines serve the checkpoint's weights, verified
        self.ahead = None
        if state.get("ahead_lag") is not None:  # the samples drawn ahead, with their lag
            self.ahead = torch.load(
                folder / AHEAD_FILE, weights_only=False, pickle_module=RENAMING_PICKLE
            )
            self.ahead.versions = torch.full_like(
                self.ahead.versions, self.weights.version - state["ahead_lag"]
            )
        if self.engine_logprobs is None and self.weights.probe is not None:  # older checkpoint
            self.engine_logprobs = decide_old_logprobs(self.cfg, max_diff)
        logger.info(
            "ppo: engines at weight version %d (max log-prob diff %.3g)",
            self.weights.version,
            max_diff,
        )
        return self.steps_done

    # ------------------------------------------------------------------ phases

    def start_generate(self, step: int) -> Generating:
        """Send step's prompts to the engines under the current weights; returns at once."""
        prompt_idx = self.roles.sampler.next_batch()
        return generation.start(
            self.cfg, self.roles, self.calls, self.pool.ids, step, prompt_idx, self.weights.version
        )

    def collect_ahead(self) -> Rollout | None:
        """The next step's samples, once drawn (None in lockstep, or after the last step)."""
        if self.generating is not None:
            self.ahead = generation.collect(self.roles, self.calls, self.generating)
            self.generating = None
            self.busy["rollout"] += max(self.ahead.engine_seconds.values(), default=0.0)
        return self.ahead

    def take_rollout(self, step: int) -> Rollout:
        """This step's samples: drawn ahead (rollout.max_staleness >= 1), or drawn now. Samples
        more than max_staleness versions old (a learner rebuilt from an older checkpoint) are
        never trained on: they are drawn again."""
        rollout, self.ahead = self.collect_ahead(), None
        if rollout is not None and rollout.versions is not None:
            lag = self.weights.version - int(rollout.versions.min())
            if lag <= self.staleness:
                return rollout
            logger.warning("ppo step %d: samples %d versions old, drawn again", step, lag)
        rollout = generation.collect(self.roles, self.calls, self.start_generate(step))
        self.busy["rollout"] += max(rollout.engine_seconds.values(), default=0.0)
        return rollout

    def score(self, rollout: Rollout) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Reward scores, reference log-probs and (those asked for) values and old log-probs,
        in parallel. -> ({scores, ref_logprobs, old_logprobs[, values]}, {metrics[, weights]}):
        each reward's mean (several rewards), the truncated importance (ppo.tis_cap)."""
        batch, from_rollout = rollout.batch, self.engine_logprobs
        n = batch.input_ids.shape[0]
        columns = getattr(rollout, "columns", None)  # none in samples saved by older versions
        reward_args = [
            (
                batch.select(slice(part.start, part.stop)),
                rollout.prompts[part.start : part.stop],
                rollout.responses[part.start : part.stop],
                columns[part.start : part.stop] if columns else None,
            )
            for part in split_evenly(n, len(self.roles.rewards))
        ]
        references = len(self.roles.references)  # none: the LoRA policy's base gives them
        ref_args = [
            (batch.select(slice(part.start, part.stop)),)
            for part in (split_evenly(n, references) if references else [])
        ]
        # The score, and each reward's own (for reward/<name>/mean when there are several).
        rewards = self.calls.start("reward", lambda a, *x: a.score_sources.remote(*x), reward_args)
        refs = self.calls.start("reference", lambda a, b: a.logprobs.remote(b), ref_args)
        # The learner call blocks; the scorers above already run meanwhile.
        learner_out, began = {}, time.perf_counter()
        old_here = not from_rollout and not self.train_logprobs  # a learner forward's, now
        if old_here or self.values or not ref_args:
            learner_out = self.roles.learner.logprobs_and_values(
                batch, old_here, self.values, not ref_args
            )
        self.busy["learner"] += time.perf_counter() - began
        returned = zip(*self.calls.wait(rewards, "score"), strict=True)
        self.busy["reward"] += time.perf_counter() - began  # at most: waited for after the learner
        scores, parts = (torch.cat(x) for x in returned)  # (B,), (B, C)
        names = [s.partition(":")[2] or s for s in reward_sources(self.cfg)]  # model, fn name
        means = {f"reward/{name}/mean": parts[:, c].mean().item() for c, name in enumerate(names)}
        extra = {"metrics": means} if len(names) > 1 else {}
        if ref_args:
            learner_out["ref_logprobs"] = torch.cat(self.calls.wait(refs, "reference"))
            self.busy["reference"] += time.perf_counter() - began
        scored = {"scores": scores, **learner_out}
        if from_rollout:
            scored["old_logprobs"] = rollout.logprobs
            return scored, extra
        if self.train_logprobs or not importance_weights(self.cfg):  # train: weighed there
            return scored, extra
        mask = batch.response_mask
        tis = truncated_importance(self.cfg, scored["old_logprobs"], rollout.logprobs, mask)
        return scored, tis | {"metrics": extra.get("metrics", {}) | tis["metrics"]}

    def after_training(
        self, rollout: Rollout, scored: dict, fields: dict, train: dict
    ) -> dict[str, float]:
        """With old log-probs from the training forward: its pi_old (the engines' where the step
        did not train) gives the step's KL to the reference into fields, and the engine gap's
        metrics (TIS weighed each token in the learner)."""
        old = train.pop(TRAIN_LOGPROBS, None)
        old = rollout.logprobs if old is None else old
        fields["old_logprobs"] = old
        fields["kl"] = trained_kl(self.cfg, rollout.batch, old, scored["ref_logprobs"])
        if not importance_weights(self.cfg):
            return {}
        mask = rollout.batch.response_mask
        return truncated_importance(self.cfg, old, rollout.logprobs, mask)["metrics"]

    def first_step(self, rollout: Rollout) -> dict[str, Any]:
        """A fresh run's first step: the probe batch (its first sequences) and the first sync
        check, which decides where old log-probs come from; the data counts."""
        initial = self.weights.set_probe(rollout.prompt_ids, rollout.response_ids)
        if self.engine_logprobs is None:
            self.engine_logprobs = decide_old_logprobs(self.cfg, initial)
        sizes = self.roles.learner.model_parameters()
        if not sizes["learner/critic_parameters"]:
            logger.info("ppo: estimator %s, no critic", self.cfg.ppo.estimator)
        return {
            "weight_sync/initial_max_logprob_diff": initial,
            **self.roles.prompts.metrics(),
            **sizes,
        }

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

    def phases(self, step: int) -> Callable[[str], Any]:
        """`with phase(name):` times the phase (timing/<name>) and, entering it, fires the test
        kill hook of actors/faults.py."""
        timer = self.timer = PhaseTimer()

        @contextlib.contextmanager
        def phase(name: str) -> Iterator[None]:
            self.calls.kill_for_test(name, step)
            with timer(name):
                yield

        return phase

    # ------------------------------------------------------------------ one step

    def step(self, step: int) -> dict[str, float]:
        """One PPO step, in the order of the paper's algorithm box; -> its flat metrics."""
        phase, start = self.phases(step), time.perf_counter()
        with phase("pool"):  # engines join or leave between steps (instructray scale, autoscale)
            self.pool.apply()
        # A checkpoint of this step's start (should an actor fail for good before the learner
        # trains) holds the sampler's position and the probe batch.
        self.at_start = {
            "sampler": self.roles.sampler.state_dict(),
            "probe": self.weights.probe,
            "ahead": self.ahead,
        }
        roles = ["rollout", "learner", "reward"] + ["reference"] * bool(self.roles.references)
        self.busy = dict.fromkeys(roles, 0.0)  # no reference actor with LoRA's policy base
        with phase("generate"):  # 1. x ~ prompts, y ~ pi(.|x), n per prompt
            rollout = self.take_rollout(step)
        first = self.first_step(rollout) if self.weights.probe is None else {}
        # The next step's samples, while this one trains (after the last step too: a run that
        # goes on from its final checkpoint trains on what the same run would have).
        if self.staleness:
            self.generating = self.start_generate(step + 1)
        with phase("score"):  # 2. RM score, reference log-probs (+ values, old log-probs)
            scored, tis = self.score(rollout)
        with phase("advantages"):  # 3. r_t = score - beta * KL_t; GAE here or in the learner
            experience, fields = make_experience(
                self.cfg,
                rollout.batch,
                scored,
                self.kl_ctl.value,
                self.gae_in_learner,
                tis.get("weights"),
                rollout.group_ids,
            )
            if self.train_logprobs and importance_weights(self.cfg) and self.cfg.ppo.tis_cap:
                experience.rollout_logprobs = rollout.logprobs  # TIS in the training forward
            stats = batch_statistics(fields, rollout.batch.response_mask)
            reason = nonfinite_fields(stats)
        train: dict[str, float] = {}
        if reason:  # nothing trains on it; the weights stay as they are
            logger.warning("ppo step %d skipped: non-finite %s", step, reason)
        else:
            with phase("train"):  # 4. ppo_epochs x minibatches on every rank
                train = self.roles.learner.train(experience)
            reason = all_steps_skipped(step, train)
        if self.train_logprobs:  # the KL (and the engine gap) of the training forward's pi_old
            gap = self.after_training(rollout, scored, fields, train)
            tis = {"metrics": tis.get("metrics", {}) | gap}
        self._count_skip(step, reason, stats, rollout.prompts)
        kl_coef, seq_kl = self.kl_ctl.value, (fields["kl"] * rollout.batch.response_mask).sum(-1)
        if torch.isfinite(seq_kl).all():  # 5. adapt beta (Ziegler et al. 2019)
            self.kl_ctl.update(seq_kl.mean().item(), len(seq_kl))
        metrics = {
            **step_metrics(step, rollout, scored["scores"], fields["kl"], kl_coef),
            **train,
            **tis.get("metrics", {}),
            **self.pool.metrics(),
            **engine_rates(rollout),
            **staleness(self.weights.version, rollout),
            "train/skipped_steps": self.skipped_steps,
            **first,
        }
        # The step is done but for the sync, which a restarted engine gets anyway: should the
        # sync fail for good, this row and a checkpoint after the step keep it.
        self.steps_done, self.unsynced = step + 1, metrics
        if train:  # engines take them between generate calls: after the next step's samples
            with phase("sync"):  # 6. the weights to the engines, verified
                self.max_diff = self.weights.sync()
        self.unsynced = None
        with phase("generate"):  # the next step's samples: drawn by now, unless nothing synced
            self.collect_ahead()
        return metrics | self.footer(start, rollout)

    def footer(self, start: float, rollout: Rollout) -> dict[str, float]:
        """The step's sync, restart and timing metrics."""
        elapsed = time.perf_counter() - start
        seconds = self.timer.seconds
        self.busy["rollout"] += seconds.get("sync", 0.0)
        self.busy["learner"] += seconds.get("train", 0.0) + seconds.get("sync", 0.0)
        idle = {f"timing/idle/{role}": max(0.0, elapsed - s) for role, s in self.busy.items()}
        return {
            **{k: round(v, 4) for k, v in idle.items()},
            "weight_sync/version": self.weights.version,
            "actor_restarts": self.calls.restarts(),
            "weight_sync/max_logprob_diff": self.max_diff,
            "weight_sync/mean_logprob_diff": self.weights.diffs["mean"],
            "weight_sync/p99_logprob_diff": self.weights.diffs["p99"],
            "weight_sync/bytes": self.weights.bytes,
            "weight_sync/buckets": self.weights.buckets,
            **self.timer.metrics(),
            "timing/step": round(elapsed, 4),
            "throughput/tokens_per_s": rollout.batch.attention_mask.sum().item() / elapsed,
        }


def all_steps_skipped(step: int, train: dict[str, float]) -> str:
    """The reason a trained step counts as skipped (every policy optimizer step was), or ""."""
    n = train["policy/optimizer_steps"]
    if train["policy/skipped_steps"] != n:
        return ""
    reason = f"loss or gradients in all {n:g} policy optimizer steps"
    logger.warning("ppo step %d skipped: non-finite %s", step, reason)
    return reason
