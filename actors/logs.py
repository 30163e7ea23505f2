"""What an actor process prints: its libraries' logs at the run's level (`run.log_level`,
warning by default), less the lines of a working run that read like failures.

Each actor calls `quiet_libraries()` first thing, before it imports vLLM, DeepSpeed or
transformers (some read their level from the environment at import), and `drop_expected()` once
vLLM has set up its own log handler.
"""

from __future__ import annotations

import logging
import os
import warnings

LEVEL_ENV = "INSTRUCTRAY_LOG_LEVEL"  # run.log_level, handed to every actor by its runtime_env
LIBRARIES = ("vllm", "DeepSpeed", "deepspeed", "transformers", "torch", "datasets", "filelock")
# Lines a working run prints, each with why it is not a failure.
EXPECTED = (
    # vLLM's in-place weight reload names the modules it had nothing to load into: a tied
    # lm_head (its weight is the embedding's) and rotary embeddings (buffers, no weights).
    "Failed to load weights",
    # vLLM casting a checkpoint's fp32 tensors into a bf16 engine, as asked.
    "Attempted to load weight",
    # vLLM's CPU worker, on every tokenizer call: the actor fixes its torch threads on purpose.
    "torch.set_num_threads",
)


class _DropExpected(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(line in message for line in EXPECTED)


def level() -> str:
    return os.environ.get(LEVEL_ENV, "warning").upper()


def quiet_libraries() -> None:
    """Libraries' loggers at the run's level; below debug, no FutureWarning or
    DeprecationWarning (notes to developers of the stack, not to its users)."""
    name = level()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", name)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", name.lower())
    if name != "DEBUG":
        os.environ.setdefault("DS_ACCELERATOR", "cpu" if not _has_gpu() else "cuda")
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
    for library in LIBRARIES:
        logging.getLogger(library).setLevel(name)


def drop_expected(logger: str = "vllm") -> None:
    """Drop EXPECTED lines at the handlers of a library's logger (its children log through
    them); at run.log_level debug, nothing is dropped."""
    if level() == "DEBUG":
        return
    for handler in logging.getLogger(logger).handlers:
        handler.addFilter(_DropExpected())


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()
