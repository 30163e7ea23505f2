"""Weights out of a (possibly ZeRO-3 partitioned) model: whole, by Hugging Face name, one at a
time; as a state dict on rank 0; and as a Hugging Face folder written atomically."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)


def _persistent_buffers(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    for module_name, module in model.named_modules():
        for name, buf in module._buffers.items():
            if buf is not None and name not in module._non_persistent_buffers_set:
                yield f"{module_name}.{name}" if module_name else name, buf


def full_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Every weight of a Hugging Face model, whole, by its HF name, one at a time.

    Under ZeRO-3 each parameter is all-gathered in turn, so at most one whole parameter is
    materialized beyond the partitions, and every rank must drain the iterator (the gathers are
    collective). Each value is a copy on the parameter's device, valid on every rank. A tied
    lm_head is left out (it shares memory with the embedding, which safetensors refuses;
    loaders re-tie it). A LoRA model's weights come merged (W + scaling x B A: actors/lora.py).
    """
    import deepspeed

    from instructray.actors.lora import hf_name, is_lora, merged_parameters

    lora = is_lora(model)
    if lora:
        params = merged_parameters(model)
        model = model.get_base_model()
    else:
        params = _gathered_parameters(model, deepspeed)
    tied = getattr(model.config, "tie_word_embeddings", False)
    for name, value in params:  # a tied weight appears once, by its first name
        if not (tied and name == "lm_head.weight"):
            yield name, value
    for name, buf in _persistent_buffers(model):
        yield hf_name(name) if lora else name, buf.detach().clone()


def _gathered_parameters(model: torch.nn.Module, deepspeed: Any) -> Iterator[tuple[str, Any]]:
    for name, param in model.named_parameters():
        with deepspeed.zero.GatheredParameters([param]):
            value = param.detach().clone()
        yield name, value


def gathered_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """`full_weights` as a CPU state dict on rank 0 (None elsewhere); every rank must call it."""
    is_dist = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if is_dist else 0
    if rank != 0:
        for _ in full_weights(model):
            pass
        return None
    return {name: value.to("cpu").contiguous() for name, value in full_weights(model)}


def gathered_adapter(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """A LoRA model's adapter (actors/lora.py, PEFT's names) as a CPU state dict on rank 0;
    None elsewhere and for a model without adapters. Every rank must call it."""
    from instructray.actors.lora import adapter_weights, is_lora

    if not is_lora(model):
        return None
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    weights = {name: value.to("cpu").contiguous() for name, value in adapter_weights(model)}
    return weights if rank == 0 else None


def save_hf_folder(
    model: torch.nn.Module,
    state: dict[str, torch.Tensor],
    tokenizer_path: str,
    path: str,
    trust_remote_code: bool = False,
    extra_files: dict[str, str] | None = None,
    adapter: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write a Hugging Face folder (config, safetensors, tokenizer, extra_files {name: text}) to
    a temp sibling, then rename it into place, so a half-written folder never sits at `path`.

    With `adapter` (a LoRA model's, gathered_adapter), the folder holds the adapter in PEFT's
    format (what `PeftModel.from_pretrained` loads) with the tokenizer and extra files, and
    `merged/` the merged model (`state`) as a plain Hugging Face folder."""
    from transformers import AutoTokenizer

    from instructray.actors.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, MERGED, adapter_config_json

    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, trust_remote_code=trust_remote_code)
    folders = [tmp]
    if adapter is not None:
        _save_tensors(adapter, tmp / ADAPTER_WEIGHTS)
        (tmp / ADAPTER_CONFIG).write_text(adapter_config_json(model))
        (tmp / MERGED).mkdir()
        folders.append(tmp / MERGED)
    hf = folders[-1]
    model.config.save_pretrained(hf)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(hf)
    _save_tensors(state, hf / "model.safetensors")
    for folder in folders:
        tokenizer.save_pretrained(folder)
        for name, text in (extra_files or {}).items():
            (folder / name).write_text(text)
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    logger.debug("saved %s", final)


def _save_tensors(state: dict[str, torch.Tensor], path: Path) -> None:
    import safetensors.torch

    safetensors.torch.save_file(state, str(path), metadata={"format": "pt"})
