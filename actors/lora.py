"""LoRA adapters (PEFT) on a model a learner trains (learner.lora_rank > 0): adding them, and
reading the model out again, whole or partitioned (ZeRO-3): the adapters alone, in PEFT's format
(what `PeftModel.from_pretrained` and vLLM's LoRA path load), or the merged weights under the
base model's Hugging Face names (what transformers and vLLM load as a plain model).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

ADAPTER = "default"  # PEFT's name of a model's one adapter
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # PEFT's file names in an adapter folder
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_CONFIG_KEY = "adapter_config"  # metadata key of an adapter's bytes in a sync: its config
MERGED = "merged"  # the merged model's sub-folder of a LoRA model's final/


def model_folder(path: str) -> str:
    """The plain Hugging Face model of a folder: a LoRA stage's final/ (the adapter, with the
    merged model in merged/) gives its merged/; any other path is returned as it is."""
    folder = Path(path)
    merged = folder / MERGED
    if (folder / ADAPTER_CONFIG).is_file() and (merged / "config.json").is_file():
        return str(merged)
    return path


def add_adapters(model: torch.nn.Module, learner_cfg: Any, task: str) -> torch.nn.Module:
    """model with fresh LoRA adapters on learner.lora_targets; only they train (and, for a
    scalar-head model, task "SEQ_CLS", its head). Adapters start as a no-op (B = 0), in the
    model's dtype. -> the PeftModel."""
    from peft import LoraConfig, get_peft_model

    targets = list(learner_cfg.lora_targets)
    config = LoraConfig(
        r=learner_cfg.lora_rank,
        lora_alpha=learner_cfg.lora_alpha,
        lora_dropout=learner_cfg.lora_dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        task_type=task,
    )
    try:
        # autocast off: adapters in the model's dtype (bf16 runs keep fp32 masters in DeepSpeed).
        return get_peft_model(model, config, autocast_adapter_dtype=False)
    except ValueError as e:  # e.g. no module of that name in this architecture
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if _linear(m)})
        raise ValueError(
            f"learner.lora_targets = {targets}: {str(e).splitlines()[0]} (the model's linear "
            f"layers: {', '.join(names)})"
        ) from None


def load_adapter(model: torch.nn.Module, folder: str) -> None:
    """Copy a saved adapter (a PEFT folder: final/, an epoch checkpoint) into model's adapters,
    partitioned or not (ZeRO-3: rank 0's copy is scattered). Every tensor must match."""
    import safetensors.torch

    saved = safetensors.torch.load_file(str(Path(folder) / ADAPTER_WEIGHTS))
    params = dict(_adapter_parameters(model))
    if set(params) != set(saved):
        missing, extra = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
        raise ValueError(
            f"adapter {folder} does not fit learner.lora_*: missing {missing[:3]}, "
            f"not in the model {extra[:3]}"
        )
    for name, param in params.items():
        with _gathered([param], modifier_rank=0):
            param.data.copy_(saved[name].to(param.dtype))


def _adapter_parameters(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """(the name PEFT saves it under, parameter) of each adapter tensor (and a SEQ_CLS head's):
    the adapter's name dropped, a trained head unwrapped (tests check PEFT's own names)."""
    for name, param in model.named_parameters():
        if "lora_" in name or "modules_to_save" in name:
            saved = name.replace(f".modules_to_save.{ADAPTER}.", ".")
            yield saved.replace(f".{ADAPTER}.", "."), param


def _linear(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Linear)


def is_lora(model: torch.nn.Module) -> bool:
    """Whether model is a PeftModel (carries adapters)."""
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def adapter_config_json(model: torch.nn.Module) -> str:
    """The adapter's adapter_config.json text (PEFT's own serialization)."""
    config = model.peft_config[ADAPTER].to_dict()
    config["target_modules"] = sorted(config["target_modules"] or [])
    return json.dumps(config, indent=2, default=list)


def _gathered(params: list[torch.nn.Parameter], modifier_rank: int | None = None) -> Any:
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)


def adapter_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The adapter's tensors (and a SEQ_CLS head's), whole, one at a time, by the names PEFT
    saves them under (no adapter name). Every rank must drain it (ZeRO-3 gathers)."""
    for saved, param in _adapter_parameters(model):
        with _gathered([param]):
            value = param.detach().clone()
        yield saved, value


def merged_parameters(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Every parameter of the base model with the adapters merged in (W + scaling x B A),
    whole, one at a time, by the base model's Hugging Face names (a trained head's too); the
    model itself is left as it is. Every rank must drain it (ZeRO-3 gathers)."""
    base = model.get_base_model()
    for name, param in base.named_parameters():
        if ".lora_" in name or ".original_module." in name:
            continue  # an adapter's own tensor, or the frozen copy of a trained head
        owner_name, _, leaf = name.rpartition(".base_layer.")
        owner = base.get_submodule(owner_name) if owner_name else None
        adapted = leaf == "weight" and ADAPTER in getattr(owner, "lora_A", {})
        extra = [owner.lora_A[ADAPTER].weight, owner.lora_B[ADAPTER].weight] if adapted else []
        with _gathered([param, *extra]):
            value = param.detach().clone()
            if adapted:
                delta = owner.get_delta_weight(ADAPTER)
                value = (value.float() + delta.float()).to(value.dtype)
        yield hf_name(name), value


def hf_name(name: str) -> str:
    """A base model's tensor name inside a PeftModel, as the plain model names it."""
    return name.replace(".base_layer.", ".").replace(f".modules_to_save.{ADAPTER}.", ".")
