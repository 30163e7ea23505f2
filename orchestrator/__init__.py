"""The driver side of InstructRay, in layers that import one way:

config/ -> data/, output/ -> (actors/) -> cluster, model_specs -> ppo/, supervised
        -> pipeline, cli -> demo/
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_face(package: str, names: dict[str, str]) -> Callable[[str], Any]:
    """A package face (PEP 562) that loads the submodule defining a name on first use, so that
    importing one module of the package (a Ray worker's `demo.world`) does not import the rest."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{names[name]}"), name)

    return __getattr__


# Imported by its bare folder name (a clone's root on sys.path): that name is not ours.
if __name__ == "orchestrator":
    from instructray import step_aside

    step_aside(__name__, __file__)
