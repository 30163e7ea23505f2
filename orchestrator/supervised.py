"""`instructray sft` and `instructray rm`: the supervised stages under Ray Train.

The driver loads and checks the examples (orchestrator/examples.py), puts them in the object
store once, and runs a `TorchTrainer` whose `learner.num_ranks` workers run actors/supervised.py's
loop under DeepSpeed ZeRO (gloo on CPU, NCCL on GPU). The stage shows in the Ray dashboard's
Train view; `FailureConfig` restarts a failed group from its last epoch checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import ray

from actors.remote import RemoteError
from orchestrator.cluster import connect
from orchestrator.config import Config
from orchestrator.examples import ExampleSet, load_demonstrations, load_rankings
from orchestrator.roles import resolve_models
from orchestrator.run_folder import RunFolder

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
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from transformers import AutoTokenizer

    from actors.supervised import train_loop

    folder = RunFolder(cfg, stage=stage)
    resolve_models(cfg, need_reward=False)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.tokenizer)
    loader = load_demonstrations if stage == "sft" else load_rankings
    examples: ExampleSet = loader(cfg, tokenizer)
    logger.info(
        "%s: %d train and %d held-out examples", stage, len(examples.train), len(examples.eval)
    )
    where = connect(cfg)
    logger.info("ray: %s", where)
    run_dir = folder.path.resolve()
    learner = cfg.learner
    backend = learner.backend
    if backend == "auto":  # by the workers' resources, not by this driver's devices
        backend = "nccl" if learner.gpus_per_rank else "gloo"
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
        },
        scaling_config=_scaling(cfg),
        torch_config=TorchConfig(backend=backend, timeout_s=int(cfg.run.timeout_s)),
        run_config=RunConfig(
            name=f"{stage}-{cfg.run.name or run_dir.name}",
            storage_path=str(run_dir / "ray_train"),
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=max(cfg.run.keep_last, 1)),
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise RemoteError(f"{stage}: training failed: {_one_line(result.error)}")
    if not (run_dir / "final").exists():
        raise RemoteError(f"{stage}: training ended without writing {run_dir / 'final'}")
    return folder


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
