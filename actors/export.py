"""Weights out of a (possibly ZeRO-3 partitioned) model: whole, by Hugging Face name, one at a
time; as a state dict on rank 0; and as a Hugging Face folder written atomically."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

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
    loaders re-tie it).
    """
    import deepspeed

    tied = getattr(model.config, "tie_word_embeddings", False)
    for name, param in model.named_parameters():  # a tied weight appears once, by its first name
        if tied and name == "lm_head.weight":
            continue
        with deepspeed.zero.GatheredParameters([param]):
            value = param.detach().clone()
        yield name, value
    for name, buf in _persistent_buffers(model):
        yield name, buf.detach().clone()


def gathered_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """`full_weights` as a CPU state dict on rank 0 (None elsewhere); every rank must call it."""
    is_dist = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if is_dist else 0
    if rank != 0:
        for _ in full_weights(model):
            pass
        return None
    return {name: value.to("cpu").contiguous() for name, value in full_weights(model)}


def save_hf_folder(
    model: torch.nn.Module,
    state: dict[str, torch.Tensor],
    tokenizer_path: str,
    path: str,
    trust_remote_code: bool = False,
    extra_files: dict[str, str] | None = None,
) -> None:
    """Write a Hugging Face folder (config, safetensors, tokenizer, extra_files {name: text}) to
    a temp sibling, then rename it into place, so a half-written folder never sits at `path`."""
    import safetensors.torch
    from transformers import AutoTokenizer

    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model.config.save_pretrained(tmp)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(tmp)
    safetensors.torch.save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, trust_remote_code=trust_remote_code)
    tokenizer.save_pretrained(tmp)
    for name, text in (extra_files or {}).items():
        (tmp / name).write_text(text)
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    logger.info("saved %s", final)
