"""`instructray ppo`: the run around PPOTrainer's steps. Checkpoints every run.save_every steps,
on SIGTERM (what `ray job stop` sends) and before stopping for non-finite numbers; resume; a dead
learner rank rebuilt from the latest checkpoint; a progress bar with reward and KL per step."""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import threading
from typing import Any

from instructray.actors.remote import ActorDied, RemoteError
from instructray.orchestrator.config import Config
from instructray.orchestrator.output import RunFolder
from instructray.orchestrator.ppo.checkpoints import Checkpoints
from instructray.orchestrator.ppo.numerics import NonFiniteError
from instructray.orchestrator.ppo.roles import Roles
from instructray.orchestrator.ppo.trainer import PPOTrainer, RestartsExhausted

logger = logging.getLogger(__name__)


class RunStopped(RemoteError):
    """The run was asked to stop (SIGTERM, e.g. `ray job stop`); a checkpoint was written."""


class _StopOnSigterm:
    """While active, SIGTERM only sets a flag; the loop checkpoints after the current step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _StopOnSigterm:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        logger.warning("SIGTERM: stopping after this step, with a checkpoint")
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _rebuild_learner(
    cfg: Config, trainer: PPOTrainer, checkpoints: Checkpoints, error: ActorDied, count: int
) -> int:
    """A learner rank died: rebuild the group from the latest checkpoint; -> the step to redo
    from. Without a checkpoint, or past run.max_actor_restarts, the run stops saying so."""
    latest = checkpoints.latest()
    if latest is None:
        raise RemoteError(
            f"{error}; no checkpoint to rebuild the learner from (set run.save_every to "
            f"survive learner failures)"
        ) from None
    if count > cfg.run.max_actor_restarts:
        raise RemoteError(
            f"{error}; the learner was already rebuilt {count - 1} time(s) "
            f"(run.max_actor_restarts); continue with --run.resume=auto"
        ) from None
    logger.warning("%s; rebuilding the learner from %s", error, latest)
    return trainer.rebuild_learner(latest)


def _save_after_failure(
    trainer: PPOTrainer, checkpoints: Checkpoints, folder: RunFolder, step: int, rebuilds: int
) -> str:
    """An actor failed for good in `step`: checkpoint what is done; -> what to tell the user.
    After training only the sync was left, which a resumed run makes as it loads: the step
    counts (its row is logged). Before training: the state as the step began."""
    try:
        if trainer.unsynced is not None:
            folder.log({**trainer.unsynced, "learner_rebuilds": rebuilds})
            path = checkpoints.save(step + 1, trainer.save)
        else:
            path = checkpoints.save(step, functools.partial(trainer.save, at_step_start=True))
    except Exception as e:  # the message of the failure comes first
        return f"no checkpoint written ({type(e).__name__}: {e})"
    return f"checkpoint {path}; continue with --run.resume=auto"


def run_ppo(cfg: Config) -> RunFolder:
    """`instructray ppo`: start the actors, run run.steps PPO steps, save final/.

    Checkpoints every run.save_every steps and on SIGTERM; run.resume continues from one."""
    from ray.experimental.tqdm_ray import tqdm

    folder = RunFolder(cfg, stage="ppo")
    checkpoints = Checkpoints(folder.path, cfg.run.keep_last)
    resume_from = checkpoints.resolve(cfg.run.resume)  # a bad path fails before any actor starts
    roles = Roles.start(cfg)
    trainer = None
    try:
        folder.write_json("placement.json", roles.placement.nodes())
        trainer = PPOTrainer(cfg, roles, folder)
        first = 0
        if resume_from is not None:
            first = trainer.load(resume_from)
            logger.info("ppo: resumed from %s at step %d", resume_from, first)
        folder.truncate_metrics(first)  # rows of steps after the checkpoint (or a failed start)
        # Drawn by Ray's bar manager: kept whole while the actors' lines print above it.
        bar = tqdm(desc="ppo", unit="step", total=cfg.run.steps)
        bar.n = first
        rebuilds = 0
        # The bar closes before an error is printed, so the error stays the last line.
        with contextlib.closing(bar), _StopOnSigterm() as stop:
            step = first
            while step < cfg.run.steps:
                try:
                    metrics = trainer.step(step)
                except ActorDied as e:
                    if not e.phase.startswith("learner"):
                        raise
                    rebuilds += 1
                    step = _rebuild_learner(cfg, trainer, checkpoints, e, rebuilds)
                    folder.truncate_metrics(step)  # the steps after the checkpoint are redone
                    bar.n = step
                    continue
                except RestartsExhausted as e:
                    where = _save_after_failure(trainer, checkpoints, folder, step, rebuilds)
                    raise RestartsExhausted(f"{e}; {where}") from None
                metrics["learner_rebuilds"] = rebuilds
                folder.log(metrics)
                if trainer.skipped is not None:
                    folder.write_json(f"diagnostics/step-{step}.json", trainer.skipped)
                bar.n = step + 1  # set_description sends the state
                bar.set_description(
                    f"ppo reward {metrics['reward/mean']:.3f} kl {metrics['kl/mean']:.3f}"
                )
                done = step + 1
                every = cfg.run.save_every
                too_many = 0 < cfg.ppo.max_skipped_steps <= trainer.skip_streak
                if stop.requested or too_many or (every and done % every == 0):
                    path = checkpoints.save(done, trainer.save)
                    logger.info("ppo: checkpoint %s", path)
                if too_many:
                    raise NonFiniteError(
                        f"ppo: {trainer.skip_streak} steps in a row skipped for non-finite "
                        f"numbers (ppo.max_skipped_steps = {cfg.ppo.max_skipped_steps}); step "
                        f"{step}: {trainer.skipped['non_finite']}; batch statistics in "
                        f"{folder.path / 'diagnostics'}; checkpoint {path}"
                    )
                if stop.requested and done < cfg.run.steps:
                    raise RunStopped(
                        f"ppo: stopped by SIGTERM after step {done} of {cfg.run.steps}; "
                        f"checkpoint {path}; continue with --run.resume=auto"
                    )
                step = done
        roles.learner.save_pretrained(str(folder.final_dir))
    finally:
        folder.close()
        if trainer is not None:
            trainer.pool.close()
        roles.shutdown()
    return folder
