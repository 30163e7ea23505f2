"""Weight sync inside vLLM workers: methods mixed into each worker via `worker_extension_cls`.

The rollout actor names this class when it builds `vllm.LLM` and calls its methods through
`llm.collective_rpc(name, args=...)`, which runs them in every worker (one per tensor-parallel
rank). A transport only decides how the new tensors reach the worker; every transport ends in
`_reload`, which copies them into the live model in place and fingerprints each tensor on its way
into the loader (`actors/weight_sync.py`): the weight-sync check compares that with the learner's.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from instructray.actors import weight_sync
from instructray.actors.faults import inject
from instructray.actors.weight_sync import Fingerprinter, Fingerprints


class WeightSyncExtension:
    """Mixed into vLLM's worker class; `self.model_runner` is the worker's model runner."""

    def stage_weights(self, data: bytes, first: bool) -> int:
        """Object-store transport: one bucket of the state dict (`safetensors.torch.save`
        bytes), kept until load_staged_weights; `first` drops what an earlier, unfinished update
        left. -> the buckets staged. Bytes are the one payload that crosses vLLM's own RPC
        serializer intact when the engine runs in separate processes (tensor parallel, or any
        GPU engine), up to 4 GiB a call: hence buckets."""
        from safetensors.torch import load

        if first or not hasattr(self, "_staged"):
            self._staged: list[dict[str, torch.Tensor]] = []
        self._staged.append(load(data))
        return len(self._staged)

    def load_staged_weights(self) -> Fingerprints:
        """Load every staged bucket into the live model in one reload, each bucket freed as
        the loader passes it. -> the fingerprints of what the loader took in."""
        staged, self._staged = getattr(self, "_staged", []), []

        def stream() -> Iterable[tuple[str, torch.Tensor]]:
            while staged:
                yield from staged.pop(0).items()

        return self._reload(stream())

    def join_weight_group(
        self,
        host: str,
        port: int,
        rank_offset: int,
        world_size: int,
        backend: str,
        timeout_s: float,
    ) -> None:
        """Broadcast transport: join the learner's weight group as rank rank_offset + own rank."""
        rank = rank_offset + self.rank  # the worker's rank within its engine
        weight_sync.close_group(getattr(self, "_weight_group", None))  # formed again
        self._weight_group = None
        self._weight_group = weight_sync.open_group(
            host, port, rank, world_size, backend, timeout_s
        )
        self._weight_device = (
            torch.device("cuda", torch.cuda.current_device())
            if backend == "nccl"
            else torch.device("cpu")
        )

    def receive_weights(self, version: int) -> Fingerprints:
        """Broadcast transport: load the buckets learner rank 0 sends as they arrive.
        -> the fingerprints of what the loader took in."""
        stream = weight_sync.receive_weights(self._weight_group, version, self._weight_device)
        try:
            return self._reload(stream)
        finally:
            for _ in stream:  # whatever the loader left: the sender waits on every bucket
                pass

    def model_device(self) -> str:
        """The device of this worker's model (its first parameter's)."""
        return str(next(self.model_runner.get_model().parameters()).device)

    def weights_checksum(self) -> float:
        """Sum of every parameter value of this worker's model shard (tests compare it).

        On the CPU build the linear layers' weights are prepacked into oneDNN handles and their
        parameters left empty, so there it covers embeddings, norms and biases only; the
        engine's log-probs (`RolloutActor.prompt_logprobs`) are the check that covers everything.
        """
        model = self.model_runner.get_model()
        return float(sum(p.detach().double().sum().item() for p in model.parameters()))

    def _reload(self, weights: Iterable[tuple[str, torch.Tensor]]) -> Fingerprints:
        # `reload_weights` runs the model's own checkpoint loader (name mapping, qkv fusion,
        # tensor-parallel sharding, tied embeddings) on freshly materialized layers, then repacks
        # them. Calling `model.load_weights` directly fails on the CPU build: once prepacked,
        # each linear weight is an empty Parameter without a `weight_loader`.
        watcher = Fingerprinter()
        self.model_runner.reload_weights(weights_iterator=watcher.watch(weights))
        if inject("rollout", "repack") != "stale":  # test hook: a head left at old weights
            _repack_cpu_lm_heads(self.model_runner.get_model())
        return watcher.seen


def _repack_cpu_lm_heads(model: torch.nn.Module) -> None:
    """Rebuild the CPU build's packed copy of each embedding-shaped weight from its live value.

    On CPU, vLLM computes logits with a prepacked copy of the LM head weight (`cpu_linear`). A
    tied head (`tie_word_embeddings`) loads nothing of its own, so `reload_weights` leaves its copy
    at the old weights: the engine embeds with the new weights but scores with the old ones
    (vLLM 0.32: log-probs off by over 1 nat after one noisy update). GPU builds have no copy.
    """
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    for module in model.modules():
        method = getattr(module, "quant_method", None)
        if hasattr(module, "cpu_linear") and isinstance(method, UnquantizedEmbeddingMethod):
            method.process_weights_after_loading(module)
