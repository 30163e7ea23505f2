"""InstructRay: InstructGPT's three steps (SFT, a K-wise reward model, PPO) on Ray.

One import namespace: `instructray.orchestrator` (the driver), `instructray.actors` (the Ray actors,
by role) and `instructray.kernels` (the math). An installed wheel holds them in this folder. In a
clone they stay in the repository's top-level folders, a layout other tools rely on, and this
package reaches them from here: so a clone on `sys.path` imports as itself with nothing installed,
which is how a job submitted from a clone runs its own code on a cluster (deploy/runtime_env.yaml:
the uploaded clone comes first on the job's path, before the copy installed in the image).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

__version__ = "0.1.0"

_here = Path(__file__).resolve().parent
if not (_here / "orchestrator").is_dir() and (_here.parent / "orchestrator" / "cli.py").is_file():
    __path__.append(str(_here.parent))  # its orchestrator/, actors/, kernels/


def step_aside(name: str, file: str) -> None:
    """Called by a top-level folder of a clone imported by its bare name (`import kernels` with
    the clone's root on sys.path, as in a job's working_dir): where another package has that name
    (Hugging Face's `kernels`, which transformers imports when it is installed), `sys.modules[name]`
    becomes that package. Where none has, the folder stays what the name imports (transformers
    probes `kernels` by importing it and finds no version: not installed). `file` is the
    folder's `__init__.py`."""
    mine = Path(file).resolve()
    path = [p for p in sys.path if Path(p or os.getcwd()).resolve() != mine.parents[1]]
    for finder in sys.meta_path:
        if finder is importlib.machinery.PathFinder:
            spec = finder.find_spec(name, path)
        else:
            spec = getattr(finder, "find_spec", lambda *_: None)(name, None)
        if spec is not None and spec.origin and Path(spec.origin).resolve() != mine:
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # what the import statement returns
            spec.loader.exec_module(module)
            return
