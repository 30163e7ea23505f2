"""The one place that builds a model and its DeepSpeed engine.

The PPO learner (actor.py) and the SFT / reward-model workers under Ray Train (supervised.py)
all come through here, so ZeRO, precision, optimizer, clipping, warm-up and weight export are set
up once.
A rank calls, in order: `init_distributed`, `load_model` (partitioned while it loads under ZeRO-3),
wraps the model in a module whose forward is the whole computation (`PolicyLogprobs`,
`TokenValues`), then `build_engine`. export.py writes it out again.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import torch

from instructray.actors.sequences import (
    SequenceBatch,
    response_logprobs,
    sequence_scores,
    token_values,
)

logger = logging.getLogger(__name__)

# ZeRO-3 keeps parameters smaller than this whole on every rank (norms, biases): gathering them
# costs more than it saves. DeepSpeed's default (1e5) would leave a tiny test model unpartitioned.
ZERO3_PERSISTENCE_THRESHOLD = 10_000


def resolve_backend(backend: str) -> str:
    """`auto` -> nccl on GPU, gloo on CPU; other names pass through."""
    if backend != "auto":
        return backend
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_distributed(
    rank: int,
    world_size: int,
    master_addr: str,
    master_port: int,
    backend: str = "auto",
    timeout_s: float = 600.0,
) -> str:
    """Join the torch.distributed group of the learner ranks; returns the backend used."""
    import deepspeed

    resolved = resolve_backend(backend)
    # Ray hands each rank only its own GPU (CUDA_VISIBLE_DEVICES), so its device is always 0.
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK="0",
        MASTER_ADDR=master_addr,
        MASTER_PORT=str(master_port),
    )
    if resolved == "nccl":
        torch.cuda.set_device(0)
    deepspeed.init_distributed(
        dist_backend=resolved,
        auto_mpi_discovery=False,
        timeout=timedelta(seconds=timeout_s),
        rank=rank,
        world_size=world_size,
    )
    return resolved


def deepspeed_config(
    learner_cfg: Any, micro_batch_size: int, grad_accum: int, dtype: str
) -> dict[str, Any]:
    """DeepSpeed config dict: ZeRO stage, optional CPU offload, bf16, clipping. No optimizer."""
    on_gpu = torch.cuda.is_available()
    if dtype == "float16" and not on_gpu:
        raise ValueError("model.dtype = float16 trains only on GPU; use bfloat16 or float32 on CPU")
    if dtype == "bfloat16" and on_gpu and not torch.cuda.is_bf16_supported():
        # model.dtype auto decides on the driver, which may see no GPU (a KubeRay head).
        raise ValueError(
            f"model.dtype = bfloat16, but this learner's GPU ({torch.cuda.get_device_name()}) "
            "has no bf16: set model.dtype to float16 or float32"
        )
    stage = learner_cfg.zero_stage
    zero: dict[str, Any] = {"stage": stage}
    if learner_cfg.offload:
        if stage == 0:
            raise ValueError("learner.offload needs learner.zero_stage >= 1, got 0")
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
        if stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": on_gpu}
    if stage == 3:
        zero["stage3_param_persistence_threshold"] = ZERO3_PERSISTENCE_THRESHOLD
    extra: dict[str, Any] = {}
    if dtype == "bfloat16" and stage >= 1:
        # bf16 weights and compute; fp32 master weights and optimizer state (DeepSpeed's bf16
        # mode), and gradients accumulated over micro-batches in fp32, not in bf16. ZeRO-0
        # accumulates in the weights' dtype (DeepSpeed has no other mode there).
        extra["data_types"] = {"grad_accum_dtype": "fp32"}
    return {
        **extra,
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": learner_cfg.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": dtype == "bfloat16"},
        # Dynamic loss scaling (loss_scale 0), GPU only (checked above).
        "fp16": {"enabled": dtype == "float16", "loss_scale": 0},
        # ZeRO-1/2/3 run any torch optimizer; DeepSpeed asks to be told so.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def _optimizer_config(learner_cfg: Any, lr: float, on_gpu: bool | None = None) -> dict[str, Any]:
    """AdamW. With offload DeepSpeed picks its CPU Adam (compiled on a node's first use, for its
    CPU). Else torch's AdamW, which needs no compile step (DeepSpeed's FusedAdam would be built
    at the first run against the node's CUDA toolkit): on GPU its fused kernel."""
    on_gpu = torch.cuda.is_available() if on_gpu is None else on_gpu
    params: dict[str, Any] = {
        "lr": lr,
        "weight_decay": learner_cfg.weight_decay,
        "eps": learner_cfg.adam_eps,
    }
    if not learner_cfg.offload:
        params["torch_adam"] = True  # DeepSpeed passes the other params to torch.optim.AdamW
        if on_gpu:
            params["fused"] = True
    return {"type": "AdamW", "params": params}


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only, not on biases and norm weights."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            shape = getattr(p, "ds_shape", p.shape)  # a ZeRO-3 partition is flat; ds_shape is not
            (decay if len(shape) >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def warmup_factor(step: int, warmup_steps: int) -> float:
    """LR multiplier of optimizer step `step` (0-based): (step + 1) / warmup_steps, then 1."""
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def _warmup_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int) -> Any:
    # DeepSpeed's WarmupLR gives the first step lr 0 and rejects 0 warm-up steps; this does neither.
    schedule = functools.partial(warmup_factor, warmup_steps=warmup_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def _enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    # The outermost Hugging Face model inside the wrapper recomputes its decoder layers.
    for module in model.modules():
        if getattr(module, "supports_gradient_checkpointing", False):
            module.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
            module.config.use_cache = False
            return
    raise ValueError(f"{type(model).__name__} holds no model that supports gradient checkpointing")


def build_engine(
    model: torch.nn.Module,
    learner_cfg: Any,
    lr: float,
    micro_batch_size: int,
    grad_accum: int,
    dtype: str,
) -> Any:
    """Wrap model in a DeepSpeed engine: AdamW, linear warm-up, clipping, ZeRO. -> DeepSpeedEngine.

    `engine.backward(loss)` then `engine.step()` per micro-batch; DeepSpeed steps the optimizer
    (and clips) every `grad_accum` micro-batches and averages gradients over the ranks.
    """
    import deepspeed

    if learner_cfg.gradient_checkpointing:
        _enable_gradient_checkpointing(model)
    config = deepspeed_config(learner_cfg, micro_batch_size, grad_accum, dtype)
    groups = _param_groups(model, learner_cfg.weight_decay)
    optimizer = None
    if learner_cfg.zero_stage == 0 and dtype == "float32":
        # The one DeepSpeed path that steps on non-finite gradients; ZeRO-1/2/3, bf16 and fp16
        # skip such a step themselves.
        optimizer = SkipNonFiniteAdamW(
            groups,
            lr=lr,
            weight_decay=learner_cfg.weight_decay,
            eps=learner_cfg.adam_eps,
            fused=_fused_adamw(groups),
        )
    else:
        config["optimizer"] = _optimizer_config(learner_cfg, lr)
    engine, *_ = deepspeed.initialize(
        model=model,
        model_parameters=groups,
        optimizer=optimizer,
        config=config,
        lr_scheduler=functools.partial(_warmup_scheduler, warmup_steps=learner_cfg.warmup_steps),
    )
    return engine


def _fused_adamw(groups: list[dict[str, Any]]) -> bool | None:
    """torch's fused AdamW on CPU (one vectorized kernel per tensor; the default there loops
    over ~10 ops per tensor); None lets torch choose on GPU."""
    params = [p for g in groups for p in g["params"]]
    return True if params and all(p.device.type == "cpu" for p in params) else None


class SkipNonFiniteAdamW(torch.optim.AdamW):
    """AdamW that leaves the weights and its state alone when a gradient is not finite, and says
    so in `overflow`, which DeepSpeed reads (no scheduler step, `was_step_applied()` False).
    ZeRO-0 all-reduces the gradients before the step: every rank decides the same."""

    overflow = False

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        self.overflow = not all(bool(torch.isfinite(g).all()) for g in grads)
        return None if self.overflow else super().step(closure)


class _ZeRO3Marker:
    """What transformers' from_pretrained asks of its HfDeepSpeedConfig (which needs accelerate,
    not installed here): the DeepSpeed config, and whether it is ZeRO-3."""

    def __init__(self, config: dict[str, Any]):
        self.config = config

    def is_zero3(self) -> bool:
        return True


@contextlib.contextmanager
def _partitioned_construction(config: dict[str, Any]) -> Iterator[None]:
    # Under ZeRO-3, from_pretrained builds the model inside deepspeed.zero.Init and loads each
    # layer gathered, then re-partitioned: no rank ever holds the whole model.
    if config["zero_optimization"]["stage"] != 3:
        yield
        return
    from transformers.integrations import deepspeed as hf_deepspeed

    marker = _ZeRO3Marker(config)  # transformers keeps only a weak reference
    hf_deepspeed.set_hf_deepspeed_config(marker)
    try:
        yield
    finally:
        hf_deepspeed.unset_hf_deepspeed_config()


def load_model(
    auto_cls: Any,
    path: str,
    learner_cfg: Any,
    model_cfg: Any,
    lora: str = "",
    adapter: str = "",
    **kwargs: Any,
) -> torch.nn.Module:
    """`auto_cls.from_pretrained(path)` in model_cfg's dtype and attention, partitioned as it
    loads under ZeRO-3; with `lora` (PEFT's task type: CAUSAL_LM, SEQ_CLS) and
    learner.lora_rank > 0, wrapped with LoRA adapters that alone train (actors/lora.py),
    starting as a no-op or from a saved `adapter` folder (a checkpoint's)."""
    config = deepspeed_config(learner_cfg, 1, 1, model_cfg.dtype)
    with _partitioned_construction(config):
        model = auto_cls.from_pretrained(
            path,
            dtype=getattr(torch, model_cfg.dtype),
            attn_implementation=model_cfg.attention(torch.cuda.is_available())[0],
            trust_remote_code=model_cfg.trust_remote_code,
            use_safetensors=True,  # never unpickle a .bin checkpoint
            **kwargs,
        )
    if lora and learner_cfg.lora_rank > 0:
        from instructray.actors.lora import add_adapters, load_adapter

        model = add_adapters(model, learner_cfg, lora)
        if adapter:
            load_adapter(model, adapter)
    return model


class PolicyLogprobs(torch.nn.Module):
    """The module the policy engine wraps: log-probs (and entropy) of the responses. -> (B, R)."""

    def __init__(self, causal_lm: torch.nn.Module, chunk_size: int):
        super().__init__()
        import deepspeed

        self.causal_lm = causal_lm
        self.chunk_size = chunk_size
        # response_logprobs reads the lm head's weight outside the head's own forward. Under
        # ZeRO-3 this tells DeepSpeed to gather it for this module's forward and backward (the
        # chunks recompute logits from it in backward); other stages ignore it.
        deepspeed.zero.register_external_parameter(self, causal_lm.get_output_embeddings().weight)

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, P + R)
        attention_mask: torch.Tensor,  # (B, P + R)
        position_ids: torch.Tensor,  # (B, P + R)
        response_mask: torch.Tensor,  # (B, R)
        prompt_len: int,
        temperature: float = 1.0,
        with_entropy: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        batch = SequenceBatch(input_ids, attention_mask, position_ids, response_mask, prompt_len)
        return response_logprobs(
            self.causal_lm, batch, self.chunk_size, temperature, with_entropy=with_entropy
        )


def engine_inputs(batch: SequenceBatch) -> tuple[Any, ...]:
    """A batch as positional tensors for an engine's forward: ZeRO-3's hooks see tensors passed
    positionally, not inside a dataclass."""
    return (
        batch.input_ids,
        batch.attention_mask,
        batch.position_ids,
        batch.response_mask,
        batch.prompt_len,
    )


class _ScalarHead(torch.nn.Module):
    """Base of the modules an engine wraps around a scalar-head (sequence-classification) model."""

    def __init__(self, value_model: torch.nn.Module):
        super().__init__()
        self.value_model = value_model

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, P + R)
        attention_mask: torch.Tensor,  # (B, P + R)
        position_ids: torch.Tensor,  # (B, P + R)
        response_mask: torch.Tensor,  # (B, R)
        prompt_len: int,
    ) -> torch.Tensor:
        batch = SequenceBatch(input_ids, attention_mask, position_ids, response_mask, prompt_len)
        return self.compute(batch)

    def compute(self, batch: SequenceBatch) -> torch.Tensor:
        raise NotImplementedError


class TokenValues(_ScalarHead):
    """The critic: a value per response token. -> (B, R)."""

    def compute(self, batch: SequenceBatch) -> torch.Tensor:
        return token_values(self.value_model, batch)


class SequenceScores(_ScalarHead):
    """The reward model in training: one score per sequence, at its last real token. -> (B,)."""

    def compute(self, batch: SequenceBatch) -> torch.Tensor:
        return sequence_scores(self.value_model, batch)
