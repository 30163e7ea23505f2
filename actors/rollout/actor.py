"""Rollout engine: one vLLM engine per actor that samples responses and takes new policy weights.

The driver wraps the plain class, `ray.remote(RolloutActor).options(num_cpus=..., num_gpus=...)`.
Everything crosses the actor boundary as plain Python lists (prompt-major samples), and weights
arrive as safetensors buckets through the object store (or by broadcast); the worker side of the
weight sync lives in `actors/rollout/vllm_extension.py`.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np

from instructray.actors.faults import inject
from instructray.actors.logs import Named, quiet_libraries
from instructray.actors.remote import ActorRestarted
from instructray.actors.rollout import BUNDLES_ENV
from instructray.actors.rollout.adapter import EngineAdapter, read_metadata
from instructray.actors.weight_sync import Fingerprints
from instructray.orchestrator.output import report_throughput

logger = logging.getLogger(__name__)

EXTENSION = "instructray.actors.rollout.vllm_extension.WeightSyncExtension"
FETCH_TIMEOUT_S = 600.0  # one bucket of a weight update out of the object store

# CPU only. vLLM's default runs the engine core in a second process and pins its OpenMP threads
# to cores it picks itself: ~15 s more start and a fraction of the decode speed on 2 cores. In
# process, the engine computes on the actor's torch threads (Ray sets OMP_NUM_THREADS from the
# actor's num_cpus) and never reads the binding variable; "nobind" (measured equal to "0-1"
# there) only keeps vLLM from pinning cores if multiprocessing is switched back on.
CPU_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
}


def _on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _ray_workers() -> dict[str, Any]:
    """Engine args of a tensor-parallel engine the run placed (BUNDLES_ENV set): vLLM's Ray
    executor starts one worker of one GPU in each bundle named there, and the actor, which
    holds no GPU, must not hide the node's GPUs from the engine it drives. Else {}: one GPU, or
    an engine that holds its tensor-parallel GPUs itself (the Sampler's), which vLLM drives with
    its own processes."""
    if not os.environ.get(BUNDLES_ENV):
        return {}
    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    return {"distributed_executor_backend": "ray"}


def _eager(enforce_eager: bool | str, on_gpu: bool) -> bool:
    """rollout.enforce_eager: auto = eager on CPU (no CUDA graphs there), CUDA graphs on GPU
    (a slower start, a faster decode)."""
    return not on_gpu if enforce_eager == "auto" else bool(enforce_eager)


def _check_lengths(sequences: list[list[int]], max_model_len: int, what: str) -> None:
    """vLLM needs room for at least one new token: 1 <= len < max_model_len."""
    for i, ids in enumerate(sequences):
        if not ids or len(ids) >= max_model_len:
            raise ValueError(
                f"{what} {i} has {len(ids)} tokens; max_model_len is {max_model_len} "
                f"(need 1 <= length < max_model_len, one position is kept for a new token)"
            )


def _request_seed(seed: int, prompt_index: int) -> int:
    """Seed of prompt i's request, drawn from (seed, i).

    vLLM seeds sample j of a request with (request seed + j), and one seed shared by all prompts
    gives every prompt the same sampling noise (near-identical first tokens on a flat model).
    Hashing (seed, i) keeps all streams apart, also across calls with consecutive seeds.
    """
    return int(np.random.SeedSequence([seed, prompt_index]).generate_state(1)[0])


def _token_logprobs(positions: list[dict[int, Any] | None], token_ids: list[int]) -> list[float]:
    """Pick each token's own log-prob out of vLLM's per-position {token_id: Logprob} dicts."""
    return [pos[tok].logprob for pos, tok in zip(positions, token_ids, strict=True)]


def _every_other_tensor(
    weights: bytes, keep_metadata: bool = False, first: int = 0
) -> tuple[bytes, int]:
    """Test hook (a half-applied update): safetensors bytes with every other tensor left out,
    counted from `first` (the tensors of the buckets before this one). -> (bytes, the tensors
    the bytes held)."""
    import safetensors.torch

    state = safetensors.torch.load(weights)
    metadata = read_metadata(weights) if keep_metadata else None
    names = sorted(state)[first % 2 :: 2]
    return safetensors.torch.save({k: state[k] for k in names}, metadata=metadata), len(state)


class RolloutActor(Named):
    """vLLM engine that samples n responses per prompt and reloads policy weights by version."""

    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "float32",
        max_model_len: int,
        seed: int = 0,
        kv_cache_gib: float = 1.0,
        enforce_eager: bool | str = "auto",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.5,
        max_lora_rank: int = 0,
        prefix_caching: bool | None = None,
        block_size: int | None = None,
    ):
        """max_lora_rank > 0: the engine serves LoRA adapters of the policy (update_adapter)
        through vLLM's LoRA path, one at a time; 0: full weights only. enforce_eager: True,
        False or auto (eager on CPU, CUDA graphs on GPU). prefix_caching: the n samples of a
        prompt share its prefill and KV, the cache reset at every weight update (None: on GPU
        only). block_size: vLLM's KV block (None: its default, 128 on CPU)."""
        quiet_libraries()
        engine_args = _ray_workers()  # first: it may unhide the node's GPUs
        on_gpu = _on_gpu()
        if max_lora_rank:
            engine_args.update(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=1)
        if block_size:
            engine_args["block_size"] = block_size
        if on_gpu:
            engine_args["gpu_memory_utilization"] = gpu_memory_utilization
        else:
            for key, value in CPU_ENV.items():  # read when vLLM builds the engine, not at import
                os.environ.setdefault(key, value)  # a runtime_env of the actor may override
            # Bytes rather than the integer-GiB VLLM_CPU_KVCACHE_SPACE, which would win if set.
            os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
            engine_args["kv_cache_memory_bytes"] = int(kv_cache_gib * 2**30)
        from vllm import LLM

        self.max_model_len = max_model_len
        self._version = 0
        self._loaded: list[Fingerprints] | None = None  # per worker, of the last weight update
        self._adapter = EngineAdapter() if max_lora_rank else None
        self._llm = LLM(
            model=model_path,
            dtype=dtype,
            max_model_len=max_model_len,
            seed=seed,
            enforce_eager=_eager(enforce_eager, on_gpu),
            tensor_parallel_size=tensor_parallel_size,
            worker_extension_cls=EXTENSION,
            load_format="safetensors",  # never unpickle a .bin checkpoint
            use_tqdm_on_load=False,  # a forwarded line per update; the driver says what starts
            # On GPU the n samples of a prompt share its prefill and prompt KV (vLLM runs them
            # as n requests); every weight update resets the cache, whose KV would be stale
            # (tested on CPU, where the default leaves it off: prompts there are short).
            enable_prefix_caching=on_gpu if prefix_caching is None else prefix_caching,
            # Log-probs of the raw model (log-softmax of logits, temperature 1, before top-k/p):
            # what the learner and the reference compute, so old_logprobs, the KL penalty and the
            # weight-sync check compare like with like. vLLM 0.32's default, pinned on purpose.
            logprobs_mode="raw_logprobs",
            **engine_args,
        )

    def ready(self) -> bool:
        """True once the engine is built (the driver's start barrier)."""
        return True

    def version(self) -> int:
        """Weight version the engine holds (0 = the weights it was started from)."""
        return self._version

    def generate(self, prompt_ids: list[list[int]], sampling: dict) -> dict:
        """Sample `n` responses per prompt, prompt-major (prompt i's n samples contiguous).

        sampling: n, max_tokens, temperature, top_p, top_k, stop (strings), stop_token_ids,
        ignore_eos, seed (int or None). Returns lists: prompt_index, response_ids (a stopped
        response keeps its EOS token), logprobs (raw model log-prob of each sampled token),
        finish_reasons ("stop" or "length"); and tokens, seconds (this call's throughput),
        version (of the weights that drew them; a newer one than `sampling["version"]` serves,
        an older one is refused: the engine was restarted and not yet brought up to date).
        """
        from vllm import SamplingParams

        inject("rollout", "generate")
        if sampling.get("version", self._version) > self._version:
            raise ActorRestarted(
                f"engine holds weight version {self._version}, the driver expects "
                f"{sampling['version']} (restarted since the last sync)"
            )
        _check_lengths(prompt_ids, self.max_model_len, "prompt")
        seed = sampling["seed"]
        base = dict(
            n=sampling["n"],
            max_tokens=sampling["max_tokens"],
            temperature=sampling["temperature"],
            top_p=sampling["top_p"],
            top_k=sampling["top_k"],
            stop=list(sampling["stop"]) or None,
            stop_token_ids=list(sampling["stop_token_ids"]) or None,
            ignore_eos=sampling["ignore_eos"],
            logprobs=0,  # only the sampled token's log-prob
            detokenize=bool(sampling["stop"]),  # text is needed only to match stop strings
        )
        params = [
            SamplingParams(**base, seed=None if seed is None else _request_seed(seed, i))
            for i in range(len(prompt_ids))
        ]
        prompts = [{"prompt_token_ids": ids} for ids in prompt_ids]
        start = time.perf_counter()
        outputs = self._llm.generate(prompts, params, use_tqdm=False, lora_request=self._lora())
        seconds = time.perf_counter() - start
        new_tokens = sum(len(s.token_ids) for r in outputs for s in r.outputs)
        report_throughput("rollout", new_tokens, seconds)
        result: dict[str, Any] = {
            "prompt_index": [],
            "response_ids": [],
            "logprobs": [],
            "finish_reasons": [],
            "tokens": new_tokens,  # sampled, in `seconds` of generation
            "seconds": seconds,
            "version": self._version,  # the weights that drew them
        }
        for i, request in enumerate(outputs):  # vLLM returns outputs in prompt order
            for sample in sorted(request.outputs, key=lambda s: s.index):
                token_ids = list(sample.token_ids)
                result["prompt_index"].append(i)
                result["response_ids"].append(token_ids)
                result["logprobs"].append(_token_logprobs(sample.logprobs, token_ids))
                result["finish_reasons"].append(sample.finish_reason)
        return result

    def prompt_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        """Engine log-prob of tokens 1..L-1 of each sequence given its prefix. -> (L-1,) each."""
        from vllm import SamplingParams

        _check_lengths(sequences, self.max_model_len, "sequence")
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
        prompts = [{"prompt_token_ids": ids} for ids in sequences]
        outputs = self._llm.generate(prompts, params, use_tqdm=False, lora_request=self._lora())
        # Position 0 has no prefix, so vLLM reports None there.
        return [
            _token_logprobs(out.prompt_logprobs[1:], ids[1:])
            for out, ids in zip(outputs, sequences, strict=True)
        ]

    def _lora(self) -> Any:
        """The LoRARequest of the adapter the engine serves (None: the base weights): every
        request of a call runs under the same one."""
        return self._adapter.request if self._adapter else None

    def update_adapter(self, version: int, adapter: bytes) -> int:
        """Serve the policy's LoRA adapter (safetensors bytes from the learner's
        export_adapter) as `version` in place of the one before; versions must rise."""
        if self._adapter is None:
            raise ValueError("this engine was started without LoRA (max_lora_rank 0)")
        fault = inject("rollout", "sync")  # test hook: "skip" or "half" breaks this update
        self._check_version(version)
        if fault == "half":
            adapter, _ = _every_other_tensor(adapter, keep_metadata=True)
        if fault != "skip":
            self._loaded = [self._adapter.load(self._llm.llm_engine, version, adapter)]
        self._version = version
        self._weights_changed()
        logger.info("rollout engine serves adapter version %d (%d bytes)", version, len(adapter))
        return version

    def weights_state(self, sequences: list[list[int]]) -> dict[str, Any]:
        """What the weight-sync check compares with the learner: the version held, the
        fingerprints of the tensors each worker's loader took in at the last update (None at
        version 0, the weights the engine started from) and the probe's log-probs."""
        return {
            "version": self._version,
            "fingerprints": self._loaded,
            "logprobs": self.prompt_logprobs(sequences),
        }

    def _check_version(self, version: int, again: bool = False) -> None:
        if version < self._version or (version == self._version and not again):
            raise ValueError(
                f"weight version {version} is not newer than the engine's version {self._version}"
            )

    def update_weights(self, version: int, weights: bytes | list[Any]) -> int:
        """Load a full policy state dict as `version`; versions must rise. weights: safetensors
        bytes, or a list of buckets (each bytes or the ObjectRef of bytes), fetched and handed to
        the engine's workers one at a time: no call into vLLM's engine process carries more than
        one bucket (its IPC cannot carry 4 GiB); the workers load them all in one reload."""
        import ray

        fault = inject("rollout", "sync")  # test hook: "skip" or "half" breaks this update
        self._check_version(version)
        parts = [weights] if isinstance(weights, bytes) else list(weights)
        size = seen = 0
        if fault != "skip":
            for i, part in enumerate(parts):
                data = part if isinstance(part, bytes) else ray.get(part, timeout=FETCH_TIMEOUT_S)
                size += len(data)
                if fault == "half":
                    data, count = _every_other_tensor(data, first=seen)
                    seen += count
                self._llm.collective_rpc("stage_weights", args=(data, i == 0))
            self._loaded = self._llm.collective_rpc("load_staged_weights")
        self._version = version
        self._weights_changed()
        logger.info(
            "rollout engine loaded weights version %d (%d bytes in %d buckets)",
            version,
            size,
            len(parts),
        )
        return version

    def _weights_changed(self) -> None:
        """Every cached prefix was computed with the weights before: drop them, so that no
        request reuses their KV (with prefix caching off there are none)."""
        if not self._llm.reset_prefix_cache():
            raise RuntimeError(
                "rollout engine: could not reset the prefix cache after a weight update "
                "(requests still hold cache blocks)"
            )

    def join_weight_group(
        self,
        host: str,
        port: int,
        rank_offset: int,
        world_size: int,
        backend: str,
        timeout_s: float,
    ) -> None:
        """Join learner rank 0's broadcast group: this engine's workers take ranks rank_offset..
        rank_offset + tensor_parallel_size - 1."""
        self._llm.collective_rpc(
            "join_weight_group", args=(host, port, rank_offset, world_size, backend, timeout_s)
        )

    def receive_weights(self, version: int, again: bool = False) -> int:
        """Load the weights learner rank 0 broadcasts now (joined group) as `version`; with
        again, also the version the engine holds (a broadcast redone after a restart)."""
        inject("rollout", "sync")
        self._check_version(version, again)
        self._loaded = self._llm.collective_rpc("receive_weights", args=(version,))
        self._version = version
        self._weights_changed()
        logger.info("rollout engine received weights version %d by broadcast", version)
        return version

    def model_device(self) -> str:
        """Where the engine's model lives: its first worker's first parameter's device."""
        return self._llm.collective_rpc("model_device")[0]

    def weights_checksum(self) -> float:
        """Sum of all parameter values over the engine's workers (tests compare it)."""
        return float(sum(self._llm.collective_rpc("weights_checksum")))
