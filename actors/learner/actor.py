"""The PPO learner: DeepSpeed ZeRO ranks holding the policy and (with ppo.estimator gae) the
critic (critic.py).

`LearnerActor` is one rank (a plain class; `LearnerGroup` in group.py wraps it with
`ray.remote` and is the driver's handle on all of them).
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any

import ray
import torch

from instructray.actors.faults import inject
from instructray.actors.learner.batching import token_budget_batches
from instructray.actors.learner.critic import Critic
from instructray.actors.learner.engine import (
    PolicyLogprobs,
    build_engine,
    engine_inputs,
    init_distributed,
    load_model,
)
from instructray.actors.learner.export import gathered_adapter, gathered_state_dict, save_hf_folder
from instructray.actors.learner.ptx import Pretraining
from instructray.actors.learner.ranks import free_port, mean_over_ranks, sum_over_ranks
from instructray.actors.learner.step import MicroBatch, backward_and_step
from instructray.actors.learner.sync import LearnerSync
from instructray.actors.logs import Named, quiet_libraries
from instructray.actors.sequences import Experience, SequenceBatch, to_width
from instructray.kernels import (
    aggregate_loss,
    aggregation_count,
    kl_loss,
    masked_mean,
    masked_whiten,
    policy_loss,
    truncated_is_weights,
)
from instructray.orchestrator.config import Config, needs_critic, set_key
from instructray.orchestrator.output import report_throughput

logger = logging.getLogger(__name__)

TRAIN_SETTINGS = (
    "learner.micro_batch_size",
    "learner.max_tokens_per_batch",
    "ppo.minibatch_size",
    "ppo.loss_agg",
)
# train()'s output key of the training forward's own log-probs (B, R), where the experience came
# without old_logprobs (ppo.old_logprobs train): the driver's KL and TIS metrics use them.
TRAIN_LOGPROBS = "old_logprobs"
# Where DeepSpeed's optimizers (ZeRO-1/2, ZeRO-3, bf16 at ZeRO-0 with and without DDP) keep
# their fp32 master weights.
MASTER_WEIGHTS = (
    "single_partition_of_fp32_groups",
    "fp32_partitioned_groups_flat",
    "fp32_groups_flat_partition",
    "fp32_groups_flat",
)
CHECKPOINT_TAG = "state"  # DeepSpeed's sub-folder name inside each engine's checkpoint folder


class LearnerActor(Named, LearnerSync):
    """One data-parallel rank: the policy's DeepSpeed engine and the critic (or none)."""

    def __init__(self, cfg: Config, rank: int, world_size: int):
        quiet_libraries()
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        # A rendezvous on this rank's node: rank 0's is the group's, which the group passes to
        # every rank's setup (the others' go unused).
        self.master_addr = ray.util.get_node_ip_address()
        self.master_port = free_port()
        self.policy: Any = None  # DeepSpeedEngine around PolicyLogprobs
        self.critic: Critic | None = None  # ppo.estimator gae only
        self.pretraining: Pretraining | None = None  # PPO-ptx (ppo.ptx_coef > 0) only
        self.train_calls = 0
        self._poison = False  # test hook: the next policy loss of this train call is non-finite
        self.weight_group: Any = None  # rank 0's group with the engines' workers (broadcast sync)
        self.weight_group_device = torch.device("cpu")  # where its buckets go out from

    def master_address(self) -> tuple[str, int]:
        return self.master_addr, self.master_port

    def setup(
        self, master_addr: str, master_port: int, pretrain: list[list[int]] | None = None
    ) -> None:
        """Join the process group at rank 0's rendezvous; load the policy and the critic (when
        the estimator has one) into their engines; keep the pretraining texts for PPO-ptx."""
        from transformers import AutoModelForCausalLM

        self.master_addr, self.master_port = master_addr, master_port

        cfg, learner, m = self.cfg, self.cfg.learner, self.cfg.model
        if cfg.ppo.minibatch_size % learner.micro_batch_size:
            raise ValueError(
                f"ppo.minibatch_size = {cfg.ppo.minibatch_size} is not divisible by "
                f"learner.micro_batch_size = {learner.micro_batch_size}"
            )
        init_distributed(
            self.rank,
            self.world_size,
            self.master_addr,
            self.master_port,
            learner.backend,
            cfg.run.timeout_s,
        )
        grad_accum = cfg.ppo.minibatch_size // learner.micro_batch_size
        torch.manual_seed(cfg.run.seed)  # a new critic head starts equal on every rank
        engine_args = (learner.micro_batch_size, grad_accum, m.dtype)
        causal_lm = load_model(AutoModelForCausalLM, m.policy, learner, m, "CAUSAL_LM")
        policy = PolicyLogprobs(causal_lm, cfg.reference.logprob_chunk_size)
        self.policy = build_engine(policy, learner, learner.lr, *engine_args)
        if needs_critic(cfg):
            self.critic = Critic(cfg, engine_args)
        if cfg.ppo.ptx_coef > 0:
            self.pretraining = Pretraining(
                pretrain or [], learner.ptx_batch_size, cfg.run.seed, self.rank
            )
        logger.info("learner rank %d/%d ready", self.rank, self.world_size)

    @property
    def device(self) -> torch.device:
        return self.policy.device

    def engines(self) -> dict[str, Any]:
        """This rank's DeepSpeed engines by name: the policy's, and the critic's if any."""
        return {"policy": self.policy} | ({"critic": self.critic.engine} if self.critic else {})

    def device_name(self) -> str:
        """Where this rank computes (`instructray doctor` checks it)."""
        return str(self.device)

    def peak_memory_gib(self) -> float:
        """This rank's peak resident memory so far (its process: models, optimizer state,
        activations; on a GPU, the device's peak allocation instead)."""
        import resource

        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated() / 2**30
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux

    def model_parameters(self) -> dict[str, int]:
        """Parameters of each model this rank trains (a critic-free estimator has none), and
        of those the trainable ones (with LoRA: the adapters, and a critic's value head)."""
        out = {}
        for name in ("policy", "critic"):
            engine = self.engines().get(name)
            params = list(engine.module.parameters()) if engine else []
            size = [getattr(p, "ds_numel", p.numel()) for p in params]  # ZeRO-3: whole sizes
            out[f"learner/{name}_parameters"] = sum(size)
            trainable = sum(n for n, p in zip(size, params, strict=True) if p.requires_grad)
            out[f"learner/{name}_trainable_parameters"] = trainable
        return out

    def optimizer_state_bytes(self) -> dict[str, float]:
        """Bytes of this rank's optimizer state per model (AdamW's moments, and DeepSpeed's
        fp32 master copies in bf16): its share of the group's, which ZeRO partitions."""
        out = {}
        for name, engine in self.engines().items():
            tensors: dict[int, int] = {}  # by storage: DeepSpeed's wrappers show their inner state
            optimizer = engine.optimizer
            while optimizer is not None:
                for state in getattr(optimizer, "state", {}).values():
                    tensors |= _sizes(state.values())
                for key in MASTER_WEIGHTS:
                    tensors |= _sizes(getattr(optimizer, key, None) or [])
                optimizer = getattr(optimizer, "optimizer", None)
            out[f"learner/{name}_optimizer_state_bytes"] = float(sum(tensors.values()))
        return out

    def _groups(self, batch: SequenceBatch, rows: torch.Tensor) -> list[torch.Tensor]:
        """`rows` of batch cut into micro-batches: learner.micro_batch_size rows each, in order;
        or with learner.max_tokens_per_batch, grouped by length into micro-batches of at most
        that many tokens (rows x longest prompt + longest response, their padding trimmed),
        split further until every rank has as many (ZeRO-3's gathers are collective)."""
        budget = self.cfg.learner.max_tokens_per_batch
        if not budget:
            return list(rows.split(self.cfg.learner.micro_batch_size))
        sizes = batch.select(rows).sizes()
        groups = [rows[g] for g in token_budget_batches(sizes, budget, True)]
        most = torch.tensor([len(groups)], device=self.device)
        torch.distributed.all_reduce(most, op=torch.distributed.ReduceOp.MAX)
        while len(groups) < int(most):  # the largest group in two (every rank has as many rows)
            i = max(range(len(groups)), key=lambda j: len(groups[j]))
            half = len(groups[i]) // 2
            groups[i : i + 1] = [groups[i][:half], groups[i][half:]]
        return groups

    @torch.no_grad()
    def logprobs_and_values(
        self,
        batch: SequenceBatch,
        with_logprobs: bool = True,
        with_values: bool = True,
        with_reference: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Rollout-time values and/or log-probs of this rank's rows; with_reference, also the
        reference's: the LoRA policy's base, its adapters off (reference.source policy_base).
        -> {values, old_logprobs, ref_logprobs}, those asked for."""
        for engine in self.engines().values():
            engine.eval()
        batch = batch.to(self.device)
        temperature = self.cfg.rollout.temperature
        n, width = batch.response_mask.shape
        wanted = {
            "old_logprobs": with_logprobs,
            "values": with_values and self.critic is not None,
            "ref_logprobs": with_reference,
        }
        out = {k: torch.zeros(n, width, device=self.device) for k, on in wanted.items() if on}
        for rows in self._groups(batch, torch.arange(n, device=self.device)):
            mb = batch.select(rows).trimmed()  # no column that is padding in all its rows
            if with_logprobs:
                lp = self.policy(*engine_inputs(mb), temperature=temperature)
                out["old_logprobs"][rows] = to_width(lp, width).float()
            if "values" in out:
                out["values"][rows] = to_width(self.critic.values(mb), width).float()
            if with_reference:
                with self.policy.module.causal_lm.disable_adapter():
                    ref = self.policy(*engine_inputs(mb), temperature=temperature)
                out["ref_logprobs"][rows] = to_width(ref * mb.response_mask, width).float()
        return {k: v.cpu() for k, v in out.items()}

    def _policy_step(
        self, part: MicroBatch, exp: dict[str, torch.Tensor], own_old: bool = False
    ) -> dict[str, float]:
        """Policy forward and backward of one micro-batch; DeepSpeed steps at its last. With
        own_old (one policy step per batch), the forward's own log-probs, detached, are pi_old:
        written into exp["old_logprobs"], and with exp["rollout_logprobs"] they give the TIS
        weights, as a forward before the step would have."""
        p, mb, rows, share = self.cfg.ppo, part.batch, part.rows, part.share
        self.policy.set_gradient_accumulation_boundary(part.last)
        mask = mb.response_mask  # (b, R)
        logprobs, entropy = self.policy(
            *engine_inputs(mb.trimmed()),
            temperature=self.cfg.rollout.temperature,
            with_entropy=True,
        )  # (b, R') each: the micro-batch's own padding trimmed
        logprobs, entropy = to_width(logprobs, mask.shape[1]), to_width(entropy, mask.shape[1])
        if own_old:
            exp["old_logprobs"][rows] = logprobs.detach().to(exp["old_logprobs"].dtype)
        old = exp["old_logprobs"][rows]
        tis = exp.get("tis_weights")
        tis = None if tis is None else tis[rows]
        if own_old and "rollout_logprobs" in exp:
            tis, _ = truncated_is_weights(old, exp["rollout_logprobs"][rows], mask, p.tis_cap)
        loss, pg_stats = policy_loss(
            logprobs,
            old,
            exp["advantages"][rows],
            mask,
            p.clip_eps,
            p.dual_clip,
            p.loss_agg,
            is_weights=tis,
            denominator=share,
            max_new_tokens=self.cfg.rollout.max_new_tokens,
        )
        stats = {
            "policy/loss": loss.item(),
            "policy/clipfrac": pg_stats["clipfrac"].item(),
            "policy/approx_kl": pg_stats["approx_kl"].item(),
            "entropy/mean": masked_mean(entropy.detach(), mask).item(),
        }
        budget = self.cfg.rollout.max_new_tokens
        if p.entropy_coef > 0:
            loss = loss - p.entropy_coef * aggregate_loss(entropy, mask, p.loss_agg, share, budget)
        if p.kl_loss_coef > 0:  # KL to the reference in the loss (GRPO's), besides the reward's
            kl = kl_loss(logprobs, exp["ref_logprobs"][rows], mask, p.kl_loss_estimator)
            kl_term = aggregate_loss(kl, mask, p.loss_agg, share, budget)
            stats["policy/kl_loss"] = kl_term.item()
            loss = loss + p.kl_loss_coef * kl_term
        if part.last and self.pretraining is not None:  # PPO-ptx, once per optimizer step
            ptx = self.pretraining.loss(self.policy)
            stats["ptx/loss"] = ptx.item()
            # DeepSpeed divides each micro-batch's loss by the accumulation steps: undone here,
            # so that the step's gradient holds gamma x the pretraining batch's LM loss once.
            accum = p.minibatch_size // self.cfg.learner.micro_batch_size
            loss = loss + p.ptx_coef * accum * ptx
        if self._poison:  # test hook (actors/faults.py): this rank's loss turns non-finite
            loss, self._poison = loss * float("nan"), False
        return backward_and_step(self.policy, loss, "policy", stats)

    def train(self, experience: Experience) -> dict[str, Any]:
        """ppo_epochs passes over this rank's rows in shuffled minibatches. -> mean metrics
        (and, for an experience without old_logprobs, TRAIN_LOGPROBS: this rank's rows' own)."""
        p, gae_in_learner = self.cfg.ppo, experience.gae_in_learner
        experience = experience.to(self.device)
        batch, exp = experience.batch, experience.tensors()
        n = batch.input_ids.shape[0]
        if n == 0 or n % p.minibatch_size:
            raise ValueError(
                f"learner rank {self.rank} got {n} rows, not a positive multiple of "
                f"ppo.minibatch_size = {p.minibatch_size}"
            )
        own_old = experience.old_logprobs is None  # the training forward's, detached
        if own_old:
            if p.ppo_epochs != 1 or n != p.minibatch_size:
                raise ValueError(
                    f"learner rank {self.rank}: an experience without old_logprobs takes them "
                    f"from the one policy step per batch, but ppo.ppo_epochs = {p.ppo_epochs} "
                    f"and {n} rows make {n // p.minibatch_size} minibatches"
                )
            exp["old_logprobs"] = torch.zeros_like(batch.response_mask, dtype=torch.float32)
        start = time.perf_counter()
        rng = random.Random(f"{self.cfg.run.seed}/{self.rank}/{self.train_calls}")
        if self.pretraining is not None:
            self.pretraining.start(self.train_calls)
        self.train_calls += 1
        self._poison = self.rank == 0 and inject("learner", "train") == "nan"
        for engine in self.engines().values():
            engine.train()
        critic, totals = self.critic, {}
        for _ in range(p.ppo_epochs):
            order = torch.tensor(rng.sample(range(n), n), device=self.device)
            parts = self._cut(batch, order)
            totals.setdefault("learner/padding_share", []).append(padding_share(parts))
            if gae_in_learner:  # the critic first: its forward gives GAE its values
                exp["advantages"] = torch.zeros_like(exp["rewards"])
                steps = [critic.step(part, exp, True) for part in parts]
                if p.whiten_advantages:
                    exp["advantages"] = masked_whiten(
                        exp["advantages"], batch.response_mask, sum_shards=sum_over_ranks
                    )
                steps += [self._policy_step(part, exp, own_old) for part in parts]
            else:
                steps = [
                    self._policy_step(part, exp, own_old)
                    | (critic.step(part, exp, False) if critic else {})
                    for part in parts
                ]
            for stats in steps:
                for key, value in stats.items():
                    totals.setdefault(key, []).append(value)
        if self.rank == 0:  # the group's tokens/s, ranks holding equal shares
            tokens = int(batch.attention_mask.sum()) * p.ppo_epochs * self.world_size
            report_throughput("learner", tokens, time.perf_counter() - start)
        counts = {k: sum(v) for k, v in totals.items() if k.endswith("_steps")}
        means = {k: sum(v) / len(v) for k, v in totals.items()} | counts
        # Optimizer state: each rank holds its ZeRO partition; the group's is their sum.
        state = {k: v * self.world_size for k, v in self.optimizer_state_bytes().items()}
        out: dict[str, Any] = mean_over_ranks(means | state, self.device)
        if own_old:
            out[TRAIN_LOGPROBS] = exp["old_logprobs"].cpu()
        if self.cfg.run.colocate and self.device.type == "cuda":
            # The caching allocator keeps the training peak reserved; a colocated engine on the
            # same GPU generates next and gets it back (as OpenRLHF empties it around training).
            torch.cuda.empty_cache()
        return out

    def _cut(self, batch: SequenceBatch, order: torch.Tensor) -> list[MicroBatch]:
        """This rank's rows in `order` as micro-batches; grad_accum consecutive ones make a
        minibatch, whose last one steps the optimizer.

        A minibatch's loss means over all of its tokens (or rows: ppo.loss_agg) on all ranks,
        whose count one all-reduce gives. DeepSpeed divides each micro-batch's loss by
        grad_accum and averages gradients over the ranks; a denominator of count / (grad_accum
        x ranks) undoes both, so the update is the same however the minibatch is cut into
        micro-batches and ranks (tests/e2e/test_invariance.py).
        """
        p = self.cfg.ppo
        # DeepSpeed divides each micro-batch's loss by the accumulation steps it was built with,
        # however many micro-batches a minibatch is cut into (token budgets cut unevenly).
        accum = p.minibatch_size // self.cfg.learner.micro_batch_size
        cuts = [self._groups(batch, rows) for rows in order.split(p.minibatch_size)]
        batches = [[batch.select(rows) for rows in groups] for groups in cuts]
        counts = [
            torch.stack([aggregation_count(b.response_mask, p.loss_agg) for b in bs]).sum()
            for bs in batches
        ]
        per_minibatch = sum_over_ranks(torch.stack(counts))
        scale = accum * self.world_size
        return [
            MicroBatch(b, rows, (per_minibatch[k] / scale).clamp(min=1 / scale), j == len(bs) - 1)
            for k, (groups, bs) in enumerate(zip(cuts, batches, strict=True))
            for j, (rows, b) in enumerate(zip(groups, bs, strict=True))
        ]

    def update_settings(self, settings: dict[str, Any]) -> None:
        """Change how the next train calls cut and reduce their rows: any of TRAIN_SETTINGS
        (e.g. smaller micro-batches to fit memory). The update itself does not change with
        the cut (see _denominators)."""
        for key, value in settings.items():
            if key not in TRAIN_SETTINGS:
                raise ValueError(f"{key} cannot change between train calls; can: {TRAIN_SETTINGS}")
            set_key(self.cfg, key, value, "learner settings")
        micro, minibatch = self.cfg.learner.micro_batch_size, self.cfg.ppo.minibatch_size
        if minibatch % micro:
            raise ValueError(
                f"ppo.minibatch_size = {minibatch} is not divisible by "
                f"learner.micro_batch_size = {micro}"
            )
        for engine in self.engines().values():
            engine.set_train_micro_batch_size(micro)
            engine.set_train_batch_size(minibatch * self.world_size)  # accumulation steps

    def save_pretrained(self, path: str) -> None:
        """The policy as a Hugging Face folder at path, written by rank 0 (all ranks call)."""
        causal_lm = self.policy.module.causal_lm
        state = gathered_state_dict(causal_lm)
        adapter = gathered_adapter(causal_lm)  # a LoRA policy's: PEFT's folder, merged/ beside
        if state is not None:
            m = self.cfg.model
            tokenizer = m.tokenizer or m.policy
            save_hf_folder(causal_lm, state, tokenizer, path, m.trust_remote_code, None, adapter)

    def save_checkpoint(self, path: str) -> None:
        """Full training state under path (all ranks call; each writes its ZeRO shards): DeepSpeed
        state of policy and critic, if any (weights, optimizer, scheduler), this rank's counters
        and RNG."""
        for name, engine in self.engines().items():
            engine.save_checkpoint(f"{path}/{name}", tag=CHECKPOINT_TAG)
        state = {"train_calls": self.train_calls, "torch_rng": torch.get_rng_state()}
        if torch.cuda.is_available():  # dropout and sampling on the GPU draw from its own
            state["cuda_rng"] = torch.cuda.get_rng_state()
        torch.save(state, f"{path}/rank-{self.rank}.pt")

    def load_checkpoint(self, path: str) -> None:
        """Restore what save_checkpoint wrote (same number of ranks)."""
        rank_file = Path(path) / f"rank-{self.rank}.pt"
        if not rank_file.exists():
            raise ValueError(
                f"checkpoint {path} has no state for learner rank {self.rank}: it was written by "
                f"a run with fewer ranks (learner.num_ranks must match)"
            )
        for name, engine in self.engines().items():
            loaded, _ = engine.load_checkpoint(
                f"{path}/{name}",
                tag=CHECKPOINT_TAG,
                load_optimizer_states=True,
                load_lr_scheduler_states=True,
            )
            if loaded is None:
                raise ValueError(f"checkpoint {path}/{name} could not be loaded")
        state = torch.load(rank_file, weights_only=True)
        self.train_calls = int(state["train_calls"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda_rng"])


def padding_share(parts: list[MicroBatch]) -> float:
    """The share of the tokens the forwards of `parts` compute (each micro-batch's rows x its
    trimmed width) that are padding."""
    computed = sum(part.batch.trimmed().input_ids.numel() for part in parts)
    real = sum(int(part.batch.attention_mask.sum()) for part in parts)
    return 1.0 - real / max(computed, 1)


def _sizes(values: Any) -> dict[int, int]:
    """{storage address: bytes} of the tensors among values."""
    return {
        v.data_ptr(): v.numel() * v.element_size()
        for v in values
        if isinstance(v, torch.Tensor) and v.dim()  # not AdamW's 0-d step count
    }
