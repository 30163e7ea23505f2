"""Module paths from before the one namespace (InstructRay 0.1's top-level `orchestrator`,
`actors`, `kernels`, and the flat actors/ folder) and their names now. A config that names an
old path (reward.function, pipeline.labeler) gets the new name in its error; a checkpoint pickled
before the move still loads."""

from __future__ import annotations

import importlib.util
import pickle
import types
from typing import Any

OLD_PACKAGES = ("orchestrator", "actors", "kernels")
# actors/ by role: the modules that moved into a role's folder
MOVED = {
    "actors.learner": "actors.learner.actor",
    "actors.learner_group": "actors.learner.group",
    "actors.learner_sync": "actors.learner.sync",
    "actors.critic": "actors.learner.critic",
    "actors.ptx": "actors.learner.ptx",
    "actors.engine": "actors.learner.engine",
    "actors.export": "actors.learner.export",
    "actors.ranks": "actors.learner.ranks",
    "actors.supervised": "actors.learner.supervised",
    "actors.batching": "actors.learner.batching",
    "actors.epoch_checkpoints": "actors.learner.epoch_checkpoints",
    "actors.rollout": "actors.rollout.actor",
    "actors.lora_engine": "actors.rollout.adapter",
    "actors.vllm_extension": "actors.rollout.vllm_extension",
    "actors.scorers": "actors.scoring.scorers",
    "actors.rule_rewards": "actors.scoring.rule_rewards",
}


def renamed(module: str) -> str | None:
    """The current name of an old module path, or None when `module` is not one (a user's own
    module, or Hugging Face's `kernels`)."""
    parts = module.split(".")
    if parts[0] not in OLD_PACKAGES:
        return None
    for n in range(len(parts), 1, -1):
        if ".".join(parts[:n]) in MOVED:
            return ".".join(["instructray", MOVED[".".join(parts[:n])], *parts[n:]])
    new = f"instructray.{module}"
    try:
        return new if importlib.util.find_spec(new) is not None else None
    except ImportError:  # a parent that is not a package
        return None


def check_function_spec(key: str, spec: str) -> str | None:
    """An error naming the new path when `module:function` names an old one, else None."""
    module, _, function = spec.partition(":")
    new = renamed(module)
    if new is None:
        return None
    return (
        f"{key} '{spec}' names a module path from before InstructRay's one namespace; "
        f"use '{new}:{function}'"
    )


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(renamed(module) or module, name)


def _load(file: Any, **kwargs: Any) -> Any:
    return _Unpickler(file, **kwargs).load()


# torch.load(..., pickle_module=RENAMING_PICKLE) reads objects pickled under the old paths.
RENAMING_PICKLE = types.SimpleNamespace(Unpickler=_Unpickler, load=_load, __name__="pickle")
