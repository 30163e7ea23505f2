"""The supervised stages' training loop, run by every Ray Train worker (`TorchTrainer`).

SFT (InstructGPT step 1) and the K-wise reward model (step 2) share one loop: the model and its
DeepSpeed engine come from engine.py (as the PPO learner's do), batches are planned the
same way on every rank, rank 0 writes metrics.jsonl and `final/`, and each epoch ends with
`ray.train.report` carrying a checkpoint (the model in HF format) from which a restarted group
(`FailureConfig`) resumes at the next epoch.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from instructray.actors.faults import inject
from instructray.actors.learner.batching import (
    even_shard,
    fixed_batches,
    shard,
    token_budget_batches,
)
from instructray.actors.learner.engine import (
    PolicyLogprobs,
    SequenceScores,
    build_engine,
    engine_inputs,
    load_model,
)
from instructray.actors.learner.epoch_checkpoints import epoch_checkpoints, write_progress
from instructray.actors.learner.export import gathered_adapter, gathered_state_dict, save_hf_folder
from instructray.actors.learner.ranks import mean_over_ranks, sum_over_ranks
from instructray.actors.logs import quiet_libraries
from instructray.actors.lora import ADAPTER_CONFIG
from instructray.actors.sequences import make_sequence_batch
from instructray.kernels import kwise_ranking_loss, sft_loss, tie_tensors
from instructray.orchestrator.config import Config
from instructray.orchestrator.output import MetricsLog, truncate_metrics

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- tasks


class _Task:
    """One supervised objective: builds its engine; loss of a batch of examples."""

    name = ""
    eval_keys: tuple[str, ...] = ("loss",)

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.engine: Any = None

    def plan(self, examples: list[Any]) -> list[list[int]]:
        raise NotImplementedError

    def count(self, examples: list[Any]) -> int:
        """What the loss averages over: response tokens (SFT) or elements (RM)."""
        raise NotImplementedError

    def loss(
        self, examples: list[Any], denominator: float | None = None
    ) -> tuple[torch.Tensor, dict[str, float], float]:
        """-> (loss, stats, weight of this batch in a mean over batches). With denominator the
        loss is the sum over these examples' units / denominator (see train_step)."""
        raise NotImplementedError

    def hf_model(self) -> torch.nn.Module:
        raise NotImplementedError

    def extra_files(self, train: list[Any]) -> dict[str, str]:
        return {}


class SFTTask(_Task):
    name = "sft"

    def __init__(self, cfg: Config, model_path: str, pad_id: int, adapter: str = ""):
        from transformers import AutoModelForCausalLM

        super().__init__(cfg)
        m, learner = cfg.model, cfg.learner
        causal_lm = load_model(AutoModelForCausalLM, model_path, learner, m, "CAUSAL_LM", adapter)
        module = PolicyLogprobs(causal_lm, cfg.reference.logprob_chunk_size)
        self.engine = build_engine(module, learner, cfg.sft.lr, 1, 1, m.dtype)
        self.pad_id = pad_id

    def plan(self, examples):
        sizes = [(len(e.prompt_ids), len(e.response_ids)) for e in examples]
        return token_budget_batches(sizes, self.cfg.sft.max_tokens_per_batch, self.cfg.sft.packing)

    def count(self, examples):
        return sum(len(e.response_ids) for e in examples)

    def loss(self, examples, denominator=None):
        batch = make_sequence_batch(
            [e.prompt_ids for e in examples], [e.response_ids for e in examples], self.pad_id
        ).to(self.engine.device)
        logprobs = self.engine(*engine_inputs(batch))  # (B, R)
        tokens = float(batch.response_mask.sum())
        loss = sft_loss(logprobs, batch.response_mask, denominator)
        mean = loss.item() if denominator is None else loss.item() * denominator / max(tokens, 1)
        return loss, {"loss": mean, "tokens": tokens}, tokens

    def hf_model(self):
        return self.engine.module.causal_lm


class RewardModelTask(_Task):
    name = "rm"
    eval_keys = ("loss", "pairwise_accuracy")

    def __init__(self, cfg: Config, model_path: str, pad_id: int, adapter: str = ""):
        from transformers import AutoModelForSequenceClassification

        super().__init__(cfg)
        m, learner = cfg.model, cfg.learner
        model = load_model(
            AutoModelForSequenceClassification,
            model_path,
            learner,
            m,
            "SEQ_CLS",
            adapter,
            num_labels=1,
        )
        model.config.pad_token_id = pad_id  # HF's own forward finds the last token by it
        self.engine = build_engine(SequenceScores(model), learner, cfg.rm.lr, 1, 1, m.dtype)
        self.pad_id = pad_id

    def plan(self, examples):
        return fixed_batches(len(examples), self.cfg.rm.batch_size)

    def scores(self, examples) -> tuple[torch.Tensor, ...]:
        """One forward over every response of every example. -> scores (B, Kmax) padded with 0,
        ranking and tiers (B, Kmax) padded with -1, num_responses (B,)."""
        prompts = [e.prompt_ids for e in examples for _ in e.response_ids]
        responses = [r for e in examples for r in e.response_ids]
        batch = make_sequence_batch(prompts, responses, self.pad_id).to(self.engine.device)
        flat = self.engine(*engine_inputs(batch))  # (sum K,)
        ks = [len(e.response_ids) for e in examples]
        k_max, device = max(ks), flat.device
        scores = torch.zeros(len(examples), k_max, dtype=flat.dtype, device=device)
        for b, part in enumerate(flat.split(ks)):
            scores[b, : len(part)] = part
        ranking, tiers = tie_tensors([e.ranking for e in examples], k_max, device)
        return scores, ranking, torch.tensor(ks, device=device), tiers

    def count(self, examples):
        return sum(len(e.ranking) > 1 for e in examples)  # a prompt whose answers all tie adds 0

    def loss(self, examples, denominator=None):
        scores, ranking, num, tiers = self.scores(examples)
        loss, stats = kwise_ranking_loss(scores, ranking, num, denominator, tiers)
        pairs = float(stats["num_pairs"])
        mean = loss.item() * (
            1 if denominator is None else denominator / max(self.count(examples), 1)
        )
        out = {"loss": mean, "pairwise_accuracy": float(stats["pairwise_accuracy"])}
        return loss, {**out, "pairs": pairs, "tied_pairs": float(stats["tied_pairs"])}, pairs

    def hf_model(self):
        return self.engine.module.value_model

    @torch.no_grad()
    def score_stats(self, examples: list[Any]) -> dict[str, float]:
        """Mean and std of the scores of every train response (all ranks; PPO normalizes by
        them so that a typical response scores 0)."""
        rank, world = _rank_world()
        plan = self.plan(examples)
        total = torch.zeros(3, dtype=torch.float64, device=self.engine.device)
        for batch in even_shard(plan, rank, world):
            scores, _, num, _ = self.scores([examples[i] for i in batch or plan[0]])
            if not batch:
                continue
            filled = torch.arange(scores.shape[1], device=scores.device) < num[:, None]
            s = scores[filled].double()
            total += torch.stack([s.new_tensor(float(s.numel())), s.sum(), (s * s).sum()])
        torch.distributed.all_reduce(total)
        n, s, ss = total.tolist()
        mean = s / n
        return {"mean": mean, "std": math.sqrt(max(ss / n - mean * mean, 0.0)), "count": n}

    def extra_files(self, train):
        return {"score_stats.json": json.dumps(self.score_stats(train), indent=1) + "\n"}


TASKS = {"sft": SFTTask, "rm": RewardModelTask}


# ---------------------------------------------------------------- the loop


def _rank_world() -> tuple[int, int]:
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def _share_of(count: int, device: torch.device) -> float:
    """The denominator that makes each rank's loss its share of the whole step's mean: all ranks'
    count / ranks (the engine averages gradients over ranks)."""
    total = sum_over_ranks(torch.tensor([float(count)], dtype=torch.float64, device=device))
    return max(float(total) / torch.distributed.get_world_size(), 1e-12)


def train_step(task: _Task, examples: list[Any]) -> dict[str, float]:
    """One optimizer step on this rank's examples: the loss is normalised by the token (SFT) or
    element (RM) count of the step's examples over all ranks, so the update is the same however
    the step's examples are dealt out. -> this rank's stats (with grad_norm)."""
    denominator = _share_of(task.count(examples), task.engine.device)
    loss, stats, _ = task.loss(examples, denominator)
    task.engine.backward(loss)
    task.engine.step()
    stats["grad_norm"] = float(task.engine.get_global_grad_norm() or 0.0)
    return stats


@torch.no_grad()
def evaluate(task: _Task, examples: list[Any]) -> dict[str, float]:
    """Held-out loss (and pairwise accuracy for the RM), weighted over all ranks' batches."""
    rank, world = _rank_world()
    task.engine.eval()
    plan = task.plan(examples)
    sums = torch.zeros(len(task.eval_keys) + 1, dtype=torch.float64, device=task.engine.device)
    for batch in even_shard(plan, rank, world):
        _, stats, weight = task.loss([examples[i] for i in batch or plan[0]])
        if batch:
            sums += torch.tensor(
                [stats[k] * weight for k in task.eval_keys] + [weight],
                dtype=torch.float64,
                device=sums.device,
            )
    torch.distributed.all_reduce(sums)
    task.engine.train()
    *totals, weight = sums.tolist()
    return {f"eval/{k}": v / weight for k, v in zip(task.eval_keys, totals, strict=True)}


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train's `train_loop_per_worker` for SFT and the reward model.

    config: cfg (Config), stage ("sft" / "rm"), backend, train / eval (ObjectRefs of example
    lists), model_path, pad_id, run_dir, first_metrics (logged in the step-0 row).
    """
    quiet_libraries()
    import deepspeed
    import ray
    import ray.train

    cfg: Config = config["cfg"]
    stage, run_dir = config["stage"], Path(config["run_dir"])
    # Ray Train has set up the process group already; DeepSpeed joins it.
    deepspeed.init_distributed(dist_backend=config["backend"], auto_mpi_discovery=False)
    rank, world = _rank_world()
    torch.manual_seed(cfg.run.seed)  # a new head starts equal on every rank
    train, held_out = ray.get(config["train"]), ray.get(config["eval"])

    model_path, first_epoch = config["model_path"], 0
    # This job's newest epoch checkpoint (after a restart: also one Ray Train had not registered
    # when the worker died), else run.resume's: continue after its last finished epoch.
    found = epoch_checkpoints(Path(config["storage"]).glob("checkpoint_*"))
    if config["resume"]:
        found += epoch_checkpoints([Path(config["resume"])])
    adapter = ""
    if found:
        first_epoch, _, checkpoint = max(found)
        logger.info("%s: resuming after epoch %d from %s", stage, first_epoch, checkpoint)
        # A LoRA checkpoint holds the adapters: the same base, they go on from where they were.
        if (Path(checkpoint) / ADAPTER_CONFIG).is_file() and cfg.learner.lora_rank:
            adapter = checkpoint
        else:
            model_path = checkpoint
    task = TASKS[stage](cfg, model_path, config["pad_id"], adapter)
    epochs = cfg.sft.epochs if stage == "sft" else cfg.rm.epochs
    plan = task.plan(train)
    steps_per_epoch = len(shard(plan, rank, world, cfg.run.seed, 0))
    step = first_epoch * steps_per_epoch
    if rank == 0 and first_epoch:  # rows written after the checkpoint are written again
        truncate_metrics(run_dir / "metrics.jsonl", step + 1)
    log = MetricsLog(cfg, run_dir, role="learner", stage=stage) if rank == 0 else None
    if first_epoch == 0:  # where training starts from: held-out numbers before any step
        first = {"step": 0, "epoch": 0, **config.get("first_metrics", {})}
        if held_out:
            first.update(evaluate(task, held_out))
        if rank == 0:
            log.log(first)
    bar = None
    if rank == 0:  # drawn by the driver, one bar, not a forwarded line per update
        from ray.experimental.tqdm_ray import tqdm

        bar = tqdm(total=epochs * steps_per_epoch, desc=stage, unit="step")
        bar.n = step
    for epoch in range(first_epoch, epochs):
        for i, batch in enumerate(shard(plan, rank, world, cfg.run.seed, epoch)):
            if i == 1:  # test hook (actors/faults.py): a crash once an epoch has logged a step
                inject(stage, "epoch")
            start = time.perf_counter()
            stats = train_step(task, [train[i] for i in batch])
            metrics = {
                f"train/{k}": v for k, v in mean_over_ranks(stats, task.engine.device).items()
            }
            metrics["train/lr"] = task.engine.get_lr()[0]
            metrics["timing/step"] = time.perf_counter() - start
            step += 1
            if rank == 0:
                log.log({"step": step, "epoch": epoch, **metrics})
                bar.n = step  # set_description sends the state
                bar.set_description(f"{stage} loss {metrics['train/loss']:.3f}")
        report = {"step": step, "epoch": epoch + 1}
        if held_out:
            report.update(evaluate(task, held_out))
        if rank == 0:
            log.log(report)
        _report_with_checkpoint(task, cfg, report, epoch + 1, rank)
    if bar is not None:
        bar.close()
    if log is not None:
        log.close()
    # final/: all ranks gather (ZeRO-3), rank 0 writes it, last of all.
    model = task.hf_model()
    extra = task.extra_files(train)
    state = gathered_state_dict(model)
    adapter = gathered_adapter(model)  # with LoRA: final/ the adapter, final/merged/ the model
    if rank == 0:
        save_hf_folder(
            model,
            state,
            cfg.model.tokenizer,
            str(run_dir / "final"),
            cfg.model.trust_remote_code,
            extra,
            adapter,
        )


def _report_with_checkpoint(
    task: _Task, cfg: Config, metrics: dict[str, Any], epochs_done: int, rank: int
) -> None:
    """`ray.train.report` of an epoch's metrics, with the model (HF format) as its checkpoint."""
    import ray.train

    model = task.hf_model()
    state = gathered_state_dict(model)
    adapter = gathered_adapter(model)  # with LoRA: what a resumed run goes on from
    with tempfile.TemporaryDirectory(prefix=f"{task.name}-ckpt-") as tmp:
        checkpoint = None
        if rank == 0:
            folder = Path(tmp) / "model"
            save_hf_folder(
                model,
                state,
                cfg.model.tokenizer,
                str(folder),
                cfg.model.trust_remote_code,
                adapter=adapter,
            )
            write_progress(folder, epochs_done)
            checkpoint = ray.train.Checkpoint.from_directory(str(folder))
        ray.train.report(metrics, checkpoint=checkpoint)
