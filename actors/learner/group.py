"""The driver's handle on the learner's ranks (LearnerActor, one per rank): starts them at once,
splits work among them, and waits for every call with a timeout."""

from __future__ import annotations

from typing import Any

import ray
import torch

from instructray.actors.learner.actor import TRAIN_LOGPROBS, LearnerActor
from instructray.actors.remote import wait_all
from instructray.actors.sequences import Experience, SequenceBatch
from instructray.orchestrator.config import Config


class LearnerGroup:
    """Driver-side handle on the learner ranks; holds actor handles only."""

    def __init__(
        self,
        cfg: Config,
        placement: list[dict[str, Any]] | None = None,
        pretrain: list[list[int]] | None = None,
    ):
        """Start the ranks and set them up; `pretrain`: the tokenized texts of PPO-ptx, which
        every rank receives (from the object store, once)."""
        self.cfg = cfg
        self.timeout_s = cfg.run.timeout_s
        n = cfg.learner.num_ranks
        remote_cls = ray.remote(LearnerActor)
        self.actors: list[Any] = []
        try:
            # Every rank's process starts at once (imports take most of the start-up); the
            # rendezvous is rank 0's, and every rank's setup gets it.
            self.actors = [
                remote_cls.options(**self._options(rank, placement)).remote(cfg, rank, n)
                for rank in range(n)
            ]
            start_s = cfg.run.start_timeout_s  # model loads and process-group set-up
            [(addr, port)] = self._wait(
                "start", [self.actors[0].master_address.remote()], timeout_s=start_s
            )
            texts = None if pretrain is None else ray.put(pretrain)
            self._wait(
                "setup",
                [a.setup.remote(addr, port, texts) for a in self.actors],
                timeout_s=start_s,
            )
        except BaseException:
            self.shutdown()
            raise

    def _options(self, rank: int, placement: list[dict[str, Any]] | None) -> dict[str, Any]:
        """Actor options of a rank: the given slot's (placement group bundle), else plain."""
        if placement is not None:
            return placement[rank]
        return {
            "num_cpus": self.cfg.learner.cpus_per_rank,
            "num_gpus": self.cfg.learner.gpus_per_rank,
        }

    def _wait(
        self,
        phase: str,
        refs: list[Any],
        fetch: list[bool] | None = None,
        timeout_s: float | None = None,
    ) -> list[Any]:
        """Results of refs[r] (rank r) within timeout_s (default: the group's timeout)."""
        names = [f"rank {r}" for r in range(len(refs))]
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        return wait_all(refs, f"learner {phase}", names, timeout_s, fetch)

    def logprobs_and_values(
        self,
        batch: SequenceBatch,
        with_logprobs: bool = True,
        with_values: bool = True,
        with_reference: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Rows split evenly over the ranks. -> {values, old_logprobs, ref_logprobs} (B, R)
        float32, those asked for (ref_logprobs: the LoRA policy's base)."""
        b, n = batch.input_ids.shape[0], len(self.actors)
        # Every rank must run the same number of forwards (ZeRO-3 gathers are collective): pad
        # with copies of the last row to a multiple of the ranks, and drop them afterwards.
        per_rank = -(-b // n)
        rows = torch.cat([torch.arange(b), torch.full((per_rank * n - b,), b - 1)])
        # Index with tensors: a copy per rank, not a view that would pickle the whole batch.
        refs = [
            actor.logprobs_and_values.remote(
                batch.select(part), with_logprobs, with_values, with_reference
            )
            for actor, part in zip(self.actors, rows.split(per_rank), strict=True)
        ]
        outs = self._wait("logprobs_and_values", refs)
        return {key: torch.cat([o[key] for o in outs])[:b] for key in outs[0]}

    def train(self, experience: Experience) -> dict[str, Any]:
        """One PPO update on all rows (sharded over the ranks). -> mean metrics over ranks; for
        an experience without old_logprobs, also TRAIN_LOGPROBS: the training forward's own
        log-probs of every row (B, R), in the experience's order."""
        shards = experience.shards(len(self.actors))
        outs = self._wait(
            "train", [a.train.remote(s) for a, s in zip(self.actors, shards, strict=True)]
        )
        own = [out.pop(TRAIN_LOGPROBS) for out in outs if TRAIN_LOGPROBS in out]
        if own:  # each rank's shard is a contiguous chunk of rows, in rank order
            outs[0][TRAIN_LOGPROBS] = torch.cat(own)
        return outs[0]

    def update_settings(self, settings: dict[str, Any]) -> None:
        """Every rank's LearnerActor.update_settings (between train calls)."""
        self._wait("update_settings", [a.update_settings.remote(settings) for a in self.actors])

    def model_parameters(self) -> dict[str, int]:
        """Parameters of the models the learner trains (learner/critic_parameters 0: none)."""
        return self._wait("model_parameters", [self.actors[0].model_parameters.remote()])[0]

    def device_names(self) -> list[str]:
        """Where each rank computes."""
        return self._wait("device", [a.device_name.remote() for a in self.actors])

    def peak_memory_gib(self) -> list[float]:
        """Each rank's peak memory so far, GiB."""
        return self._wait("peak_memory", [a.peak_memory_gib.remote() for a in self.actors])

    def export_weights(self, model: str = "policy") -> Any:
        """ObjectRef of the policy's (or critic's) safetensors bytes (rank 0's; stays in the
        object store)."""
        refs = [a.export_weights.remote(model) for a in self.actors]
        fetch = [rank != 0 for rank in range(len(refs))]
        return self._wait("export_weights", refs, fetch)[0]

    def export_weight_buckets(self) -> list[Any]:
        """ObjectRefs of the policy's weights in safetensors buckets (rank 0's, in order; see
        LearnerActor.export_weight_buckets)."""
        refs = [a.export_weight_buckets.remote() for a in self.actors]
        return self._wait("export_weights", refs)[0]

    def open_weight_group(self, world_size: int, backend: str) -> tuple[str, int, list[Any]]:
        """Start rank 0 joining a broadcast weight group of world_size ranks. -> (host, port,
        refs): the engines' workers join at host:port; the caller waits on refs with theirs."""
        [(host, port)] = self._wait("weight group", [self.actors[0].weight_group_address.remote()])
        return (
            host,
            port,
            [self.actors[0].open_weight_group.remote(host, port, world_size, backend)],
        )

    def broadcast_weights(self, version: int) -> list[Any]:
        """Start every rank's part of a broadcast sync (see LearnerActor.broadcast_weights).
        -> refs by rank, for the caller to wait on with the engines' receives."""
        return [a.broadcast_weights.remote(version) for a in self.actors]

    def probe_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        """Log-probs of tokens 1..L-1 of each sequence (all ranks run it; rank 0's answer)."""
        return self._wait(
            "probe_logprobs", [a.probe_logprobs.remote(sequences) for a in self.actors]
        )[0]

    def export_adapter(self) -> Any:
        """ObjectRef of the policy's LoRA adapter as safetensors bytes (rank 0's)."""
        refs = [a.export_adapter.remote() for a in self.actors]
        fetch = [rank != 0 for rank in range(len(refs))]
        return self._wait("export_adapter", refs, fetch)[0]

    def weights_state(self, sequences: list[list[int]], adapter: bool = False) -> dict[str, Any]:
        """Rank 0's fingerprints of what a sync sends (the policy's weights, or its adapter)
        and the probe's log-probs."""
        refs = [a.weights_state.remote(sequences, adapter) for a in self.actors]
        return self._wait("weights_state", refs)[0]

    def save_pretrained(self, path: str) -> None:
        """Hugging Face folder of the policy at path (on rank 0's node)."""
        self._wait("save_pretrained", [a.save_pretrained.remote(path) for a in self.actors])

    def save_checkpoint(self, path: str) -> None:
        """Every rank's training state under path (a folder all ranks can reach)."""
        self._wait("save_checkpoint", [a.save_checkpoint.remote(path) for a in self.actors])

    def load_checkpoint(self, path: str) -> None:
        self._wait("load_checkpoint", [a.load_checkpoint.remote(path) for a in self.actors])

    def shutdown(self) -> None:
        """Kill the ranks (idempotent)."""
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
