"""The learner's side of the weight sync (a mixin of LearnerActor): the policy's weights out,
in buckets through the object store or broadcast over gloo / NCCL, or its LoRA adapter alone;
and what the sync check compares an engine with (fingerprints of what was sent, the probe's
log-probs).

A LoRA policy's full weights are its merged ones (actors/lora.py); its adapter goes out as
safetensors bytes whose metadata carries adapter_config.json (lora.ADAPTER_CONFIG_KEY).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import ray
import torch

from instructray.actors.learner.engine import engine_inputs
from instructray.actors.learner.export import full_weights, gathered_state_dict
from instructray.actors.learner.ranks import free_port
from instructray.actors.lora import ADAPTER_CONFIG_KEY, adapter_config_json, adapter_weights
from instructray.actors.sequences import text_batch
from instructray.actors.weight_sync import (
    buckets,
    close_group,
    fingerprints_of,
    open_group,
    send_weights,
)


class LearnerSync:
    """Mixed into LearnerActor: needs self.cfg, self.rank, self.policy, self.engines(),
    self.device, self.weight_group and self.weight_group_device."""

    def _sent_weights(self, adapter: bool) -> Iterator[tuple[str, torch.Tensor]]:
        """What a sync sends, by name: the policy's adapter (adapter) or its full weights."""
        causal_lm = self.policy.module.causal_lm
        return adapter_weights(causal_lm) if adapter else full_weights(causal_lm)

    def export_weights(self, model: str = "policy") -> bytes | None:
        """The policy's (or the critic's) full weights as safetensors bytes on rank 0 (None
        elsewhere). All ranks must call it (ZeRO-3 gathers)."""
        import safetensors.torch

        engine = self.engines()[model]
        hf = engine.module.causal_lm if model == "policy" else engine.module.value_model
        state = gathered_state_dict(hf)
        return None if state is None else safetensors.torch.save(state)

    def export_weight_buckets(self) -> list[Any] | None:
        """The policy's full weights as the object-store transport sends them: safetensors
        buckets of at most rollout.sync_bucket_mib each (a larger tensor alone), each put in the
        object store as it is made; -> their ObjectRefs in order on rank 0, None elsewhere. All
        ranks must call it (ZeRO-3 gathers one parameter at a time)."""
        import safetensors.torch

        weights = self._sent_weights(adapter=False)
        if self.rank != 0:
            for _ in weights:
                pass
            return None
        bucket_bytes = int(self.cfg.rollout.sync_bucket_mib * 2**20)
        return [
            ray.put(safetensors.torch.save({n: t.to("cpu").contiguous() for n, t in bucket}))
            for bucket in buckets(weights, bucket_bytes)
        ]

    def export_adapter(self) -> bytes | None:
        """The policy's LoRA adapter as safetensors bytes (PEFT's names; its adapter_config.json
        in the metadata) on rank 0, None elsewhere. All ranks must call it (ZeRO-3 gathers)."""
        import safetensors.torch

        weights = {n: t.to("cpu").contiguous() for n, t in self._sent_weights(adapter=True)}
        if self.rank != 0:
            return None
        config = adapter_config_json(self.policy.module.causal_lm)
        return safetensors.torch.save(weights, metadata={ADAPTER_CONFIG_KEY: config})

    def weight_group_address(self) -> tuple[str, int]:
        """Where rank 0 will host the weight group's rendezvous (this node, a free port)."""
        return ray.util.get_node_ip_address(), free_port()

    def open_weight_group(self, host: str, port: int, world_size: int, backend: str) -> None:
        """Rank 0 joins the weight group as its rank 0 (the engines' workers join alongside)."""
        close_group(self.weight_group)  # formed again: the old group's members left it
        self.weight_group = None
        self.weight_group = open_group(host, port, 0, world_size, backend, self.cfg.run.timeout_s)
        # gloo carries host memory: on a GPU learner the buckets go out through the CPU, as the
        # engines receive them there.
        self.weight_group_device = self.device if backend == "nccl" else torch.device("cpu")

    @torch.no_grad()
    def broadcast_weights(self, version: int) -> int:
        """Rank 0 broadcasts the policy's weights in buckets over the weight group while every
        rank gathers them (ZeRO-3); all ranks must call it. -> bytes sent (0 off rank 0)."""
        weights = self._sent_weights(adapter=False)
        if self.rank != 0:
            for _ in weights:
                pass
            return 0
        bucket_bytes = int(self.cfg.rollout.sync_bucket_mib * 2**20)
        device = self.weight_group_device
        return send_weights(self.weight_group, weights, version, bucket_bytes, device)

    @torch.no_grad()
    def probe_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        """Temperature-1 log-probs of tokens 1..L-1 of each sequence given its prefix."""
        self.policy.eval()
        batch = text_batch(sequences).to(self.device)
        parts = [
            self.policy(*engine_inputs(batch.select(r)))
            for r in torch.arange(len(batch.input_ids)).split(self.cfg.learner.micro_batch_size)
        ]
        logprobs = torch.cat(parts).float().cpu()  # (B, max L - 1)
        return [logprobs[i, : len(s) - 1].tolist() for i, s in enumerate(sequences)]

    @torch.no_grad()
    def weights_state(self, sequences: list[list[int]], adapter: bool = False) -> dict[str, Any]:
        """What the weight-sync check compares an engine with: the fingerprints of what a sync
        sends (the full weights, or the adapter alone; rank 0's, None elsewhere) and the
        probe's log-probs. All ranks call (ZeRO-3 gathers)."""
        weights = self._sent_weights(adapter)
        if self.rank == 0:
            fingerprints = fingerprints_of(weights)
        else:
            fingerprints = None
            for _ in weights:
                pass
        return {"fingerprints": fingerprints, "logprobs": self.probe_logprobs(sequences)}
