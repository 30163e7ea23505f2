"""What an actor process prints: its libraries' logs at the run's level (`run.log_level`,
warning by default), less the lines of a working run that read like failures.

Each actor calls `quiet_libraries()` first thing, before it imports vLLM, DeepSpeed or
transformers (some read their level from the environment at import).
"""

from __future__ import annotations

import logging
import os
import warnings

LEVEL_ENV = "INSTRUCTRAY_LOG_LEVEL"  # run.log_level, handed to every actor by its runtime_env
ACTOR_NAME_ENV = "INSTRUCTRAY_ACTOR"  # the actor's role and number, e.g. rollout-0
LIBRARIES = (
    "vllm",
    "DeepSpeed",
    "deepspeed",
    "transformers",
    "torch",
    "datasets",
    "filelock",
    "ray.train",  # "Checkpoint successfully created at ..." on every epoch
)
# Lines a working run prints, by the logger that prints them, each with why it is no failure.
EXPECTED = {
    # vLLM's in-place weight reload names the modules it had nothing to load into: a tied
    # lm_head (its weight is the embedding's) and rotary embeddings (buffers, no weights).
    "vllm.model_executor.model_loader.reload.layerwise": ("Failed to load weights",),
    # vLLM casting a checkpoint's fp32 tensors into a bf16 engine, as asked.
    "vllm.model_executor.models.utils": ("Attempted to load weight",),
    "vllm.model_executor.model_loader.weight_utils": ("Attempted to load weight",),
    # The CPU build runs without Triton (and so without Model Runner V2); the engine runs in
    # process and eagerly on purpose (rollout.enforce_eager), each request seeded by the run.
    "vllm.platforms.cpu": ("Triton is not installed", "Reset SSM cache type"),
    "vllm.config.vllm": (
        "Model Runner V2 requires Triton",
        "Enforce eager set",
        "Inductor compilation was disabled",
    ),
    "vllm.engine.arg_utils": ("The global random seed is set",),
    # On every tokenizer call: the actor fixes its torch threads on purpose.
    "vllm.v1.worker.cpu_worker": ("torch.set_num_threads",),
    # The first request with a LoRA adapter (rollout.lora_sync: adapter, whose folders carry no
    # tokenizer: the base model's serves, as meant).
    "vllm.v1.engine.input_processor": ("different tokenizers for different LoRAs",),
}


class _DropExpected(logging.Filter):
    def __init__(self, lines: tuple[str, ...]):
        super().__init__()
        self.lines = lines

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(line in message for line in self.lines)


def level() -> str:
    return os.environ.get(LEVEL_ENV, "warning").upper()


def quiet_libraries() -> None:
    """Libraries' loggers at the run's level, EXPECTED lines left out; below debug, no
    FutureWarning or DeprecationWarning (notes to the stack's developers, not its users)."""
    name = level()
    # transformers' and the Hub's bars (loading, saving weights): a line per update in a
    # worker's forwarded log; the stage's own bar says how far it is.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", name)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", name.lower())
    for library in LIBRARIES:
        logging.getLogger(library).setLevel(name)
    if name == "DEBUG":
        return
    name_accelerator()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for logger, lines in EXPECTED.items():  # a logger's own filters outlive vLLM's dictConfig
        target = logging.getLogger(logger)
        if not any(isinstance(f, _DropExpected) for f in target.filters):
            target.addFilter(_DropExpected(lines))


def name_accelerator() -> None:
    """Tell DeepSpeed its accelerator (unless set): left to guess, it says "Setting accelerator
    to CPU ... we were unable to detect it" wherever it is imported (transformers imports it
    through accelerate, e.g. to save a model)."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if _has_gpu() else "cpu")


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


class Named:
    """An actor whose repr is its role and number (ACTOR_NAME_ENV, set by its placement slot):
    Ray shows it in the dashboard's actor list (Repr) and in front of its console lines, in
    place of the class name."""

    def __repr__(self) -> str:
        return os.environ.get(ACTOR_NAME_ENV) or type(self).__name__
