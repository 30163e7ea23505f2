"""`instructray sft` and `instructray rm`: the supervised stages under Ray Train.

The driver loads and checks the examples (orchestrator/data/examples.py), puts them in the object
store once, and runs a `TorchTrainer` whose `learner.num_ranks` workers run the loop of
actors/learner/supervised.py under DeepSpeed ZeRO (gloo on CPU, NCCL on GPU). The stage shows
in the Ray dashboard's Train view; `FailureConfig` restarts a failed group from its last epoch
checkpoint.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import ray

from instructray.actors.remote import RemoteError
from instructray.actors.sequences import load_tokenizer
from instructray.orchestrator.cluster import actor_env, connect
from instructray.orchestrator.config import Config
from instructray.orchestrator.data import ExampleSet, load_demonstrations, load_rankings
from instructray.orchestrator.model_specs import resolve_models
from instructray.orchestrator.output import RunFolder

logger = logging.getLogger(__name__)


def _scaling(cfg: Config) -> Any:
    from ray.train import ScalingConfig

    learner = cfg.learner
    resources = {"CPU": learner.cpus_per_rank}
    if learner.gpus_per_rank:
        resources["GPU"] = learner.gpus_per_rank
    return ScalingConfig(
        num_workers=learner.num_ranks,
        use_gpu=bool(learner.gpus_per_rank),
        resources_per_worker=resources,
    )


def run_supervised(cfg: Config, stage: str) -> RunFolder:
    """Train SFT ("sft") or the reward model ("rm") into cfg.run.output_dir/final."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, TrainingFailedError
    from ray.train.torch import TorchConfig, TorchTrainer

    from instructray.actors.learner.supervised import train_loop

    folder = RunFolder(cfg, stage=stage)
    resolve_models(cfg, need_reward=False)
    tokenizer = load_tokenizer(cfg.model.tokenizer, cfg.model.trust_remote_code)
    loader = load_demonstrations if stage == "sft" else load_rankings
    examples: ExampleSet = loader(cfg, tokenizer)
    logger.info(
        "%s: %d train and %d held-out examples", stage, len(examples.train), len(examples.eval)
    )
    run_dir = folder.path.resolve()
    resume = _resume_from(cfg, run_dir / "ray_train", stage)  # before Ray starts: errors first
    where = connect(cfg)
    logger.info("ray: %s", where)
    learner = cfg.learner
    backend = learner.backend
    if backend == "auto":  # by the workers' resources, not by this driver's devices
        backend = "nccl" if learner.gpus_per_rank else "gloo"
    # One name per job: Ray Train would otherwise pick up an earlier job's state on its own;
    # run.resume says whether to.
    name = f"{stage}-{cfg.run.name or run_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "cfg": cfg,
            "stage": stage,
            "backend": backend,
            "train": ray.put(examples.train),
            "eval": ray.put(examples.eval),
            "model_path": cfg.model.policy,
            "pad_id": tokenizer.pad_token_id,
            "run_dir": str(run_dir),
            "first_metrics": examples.metrics(),
            "resume": resume,
            "storage": str(run_dir / "ray_train" / name),
        },
        scaling_config=_scaling(cfg),
        torch_config=TorchConfig(backend=backend, timeout_s=int(cfg.run.timeout_s)),
        run_config=RunConfig(
            name=name,
            storage_path=str(run_dir / "ray_train"),
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=max(cfg.run.keep_last, 1)),
            worker_runtime_env={"env_vars": actor_env(cfg)},
        ),
    )
    try:
        result = trainer.fit()
    except TrainingFailedError as e:  # Ray Train 2.x raises where 1.x returned result.error
        raise RemoteError(f"{stage}: training failed: {_one_line(e)}") from None
    if result.error is not None:
        raise RemoteError(f"{stage}: training failed: {_one_line(result.error)}")
    if not (run_dir / "final").exists():
        raise RemoteError(f"{stage}: training ended without writing {run_dir / 'final'}")
    return folder


def _resume_from(cfg: Config, storage: Path, stage: str) -> str:
    """run.resume for SFT / RM: "" -> "", refusing a folder that holds an unfinished run;
    auto -> the epoch checkpoint with the most epochs done under storage ("" if none); else
    that checkpoint folder. Resuming restarts the epoch after it (the optimizer starts anew)."""
    from instructray.actors.learner.epoch_checkpoints import epoch_checkpoints

    found = epoch_checkpoints(storage.glob("*/checkpoint_*"))
    if not cfg.run.resume:
        if found:
            raise FileExistsError(
                f"{storage.parent} holds an unfinished {stage} run (epoch checkpoints in "
                f"{storage}); continue it with --run.resume=auto or choose another run.output_dir"
            )
        return ""
    if cfg.run.resume == "auto":
        return max(found)[2] if found else ""
    if not epoch_checkpoints([Path(cfg.run.resume)]):
        raise FileNotFoundError(
            f"run.resume = {cfg.run.resume}: not a complete {stage} epoch checkpoint; give a "
            f"{storage.name}/<job>/checkpoint_* folder or auto"
        )
    return cfg.run.resume


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[-500:] if len(text) > 500 else text


def run_sft(cfg: Config) -> RunFolder:
    """`instructray sft`: fine-tune model.policy on data.demonstrations."""
    return run_supervised(cfg, "sft")


def run_rm(cfg: Config) -> RunFolder:
    """`instructray rm`: train a reward model from data.rankings, starting from model.policy
    (InstructGPT starts it from the SFT model, its LM head replaced by a scalar head)."""
    return run_supervised(cfg, "rm")


def final_path(folder: RunFolder | Path | str) -> str:
    """The `final/` model folder of a finished stage."""
    path = folder.path if isinstance(folder, RunFolder) else Path(folder)
    return str(path / "final")
