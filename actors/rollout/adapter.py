"""A rollout engine's side of the adapter sync (rollout.lora_sync: adapter): the policy's LoRA
adapter arrives as safetensors bytes (its adapter_config.json in their metadata), is written as
a PEFT adapter folder and served through vLLM's LoRA path under a request id of its version,
replacing the adapter before it. The engine serves one adapter at a time, and each generate call
names one: no request ever mixes two versions.
"""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any

from instructray.actors.lora import ADAPTER_CONFIG, ADAPTER_CONFIG_KEY, ADAPTER_WEIGHTS
from instructray.actors.weight_sync import Fingerprints, fingerprints_of


def read_metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of safetensors bytes (the format: an 8-byte little-endian header
    length, then the JSON header)."""
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]).get("__metadata__", {})


class EngineAdapter:
    """The adapter an engine serves: its folder (one per version, the last kept) and request."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="instructray-adapter-"))
        self.request: Any = None  # vllm LoRARequest; None until the first adapter

    def load(self, llm_engine: Any, version: int, data: bytes) -> Fingerprints:
        """Write the adapter of `version` and serve it in place of the one before. -> the
        fingerprints of the tensors written (what vLLM's loader reads)."""
        import safetensors.torch
        from vllm.lora.request import LoRARequest

        config = read_metadata(data).get(ADAPTER_CONFIG_KEY)
        if config is None:
            raise ValueError(f"adapter version {version} arrived without its {ADAPTER_CONFIG}")
        folder = self.root / f"v{version}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        (folder / ADAPTER_WEIGHTS).write_bytes(data)
        (folder / ADAPTER_CONFIG).write_text(config)
        old, self.request = self.request, None
        if old is not None:  # out first: the engine holds one adapter (max_loras 1)
            llm_engine.remove_lora(old.lora_int_id)
            shutil.rmtree(old.lora_path, ignore_errors=True)
        # vLLM needs ids > 0; versions start at 1.
        request = LoRARequest(f"policy-v{version}", version, str(folder))
        if not llm_engine.add_lora(request):
            raise RuntimeError(f"vLLM did not load adapter version {version} from {folder}")
        self.request = request
        written = safetensors.torch.load_file(str(folder / ADAPTER_WEIGHTS))
        return fingerprints_of(sorted(written.items()))
