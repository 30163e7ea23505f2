"""Functions a config names (reward.function, pipeline.labeler, data.prompt_map): found by module
(`module:function`) or by file (`path/to/file.py:function`), with errors that name the key, the
file and the line.

A file is read where the run starts and its text travels with the actors that call it
(`read_files`), so it need not exist on the other nodes. In a Ray job the driver finds it as the
file of the same name in the package SHIPPED_PACKAGE that `instructray submit` adds to the job's
runtime_env `py_modules`.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import traceback
import types
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

RAW_PROMPTS = "raw_prompts"  # the column of a prompt as the data set wrote it (before templates)
SHIPPED_PACKAGE = "instructray_function_files"  # where a job's function files arrive
ARGUMENTS = ("prompts", "responses")  # what a reward function gets first, by position


def is_file_spec(spec: str) -> bool:
    """Whether `spec` names a file (`path/to/file.py:function`) rather than a module."""
    return spec.rpartition(":")[0].endswith(".py")


def _read_source(path: str, key: str, spec: str) -> str:
    """A function file's text: from disk, else (in a Ray job) the copy of the same name that
    `instructray submit` shipped in SHIPPED_PACKAGE (runtime_env py_modules)."""
    file = Path(path).expanduser()
    if file.is_file():
        return file.read_text()
    shipped = importlib.util.find_spec(SHIPPED_PACKAGE)  # a job's py_modules (jobs.submit)
    for folder in (shipped and shipped.submodule_search_locations) or []:
        if (Path(folder) / file.name).is_file():
            return (Path(folder) / file.name).read_text()
    raise ValueError(f"{key} = {spec!r}: the file {path} does not exist (seen from {Path.cwd()})")


def _error_line(path: str) -> str:
    """The line of `path` where the exception being handled was raised ('' if not in it)."""
    frames = [f for f in traceback.extract_tb(sys.exc_info()[2]) if f.filename == path]
    return f", line {frames[-1].lineno}" if frames else ""


def _module_of_file(path: str, source: str, key: str, spec: str) -> types.ModuleType:
    """The module a reward file defines, run from its text under a name of its own."""
    name = "instructray_reward_file_" + "".join(c if c.isalnum() else "_" for c in path)
    if name in sys.modules:
        return sys.modules[name]
    module = types.ModuleType(name)
    module.__file__ = path
    sys.modules[name] = module  # dataclasses and pickle look a module up by name
    try:
        exec(compile(source, path, "exec"), module.__dict__)
    except SyntaxError as e:
        del sys.modules[name]
        raise ValueError(
            f"{key} = {spec!r}: {path}, line {e.lineno}: SyntaxError: {e.msg}"
        ) from None
    except Exception as e:
        del sys.modules[name]
        first = " ".join(str(e).split())[:200]
        raise ValueError(
            f"{key} = {spec!r}: {path}{_error_line(path)}: {type(e).__name__} when imported: "
            f"{first}"
        ) from None
    return module


def load_function(spec: str, key: str, files: dict[str, str] | None = None) -> Callable[..., Any]:
    """Import `module:function` or `path/to/file.py:function` (the reward function, the
    pipeline's labeler); a file's text is taken from `files` (path -> text, as
    read_files gives it) when it is there. ValueError naming the key, the file and what is
    missing."""
    target, _, fn_name = spec.rpartition(":")
    if not target or not fn_name:
        raise ValueError(
            f"{key} must look like module:function or path/to/file.py:function, got {spec!r}"
        )
    if is_file_spec(spec):
        source = (files or {}).get(target)
        if source is None:
            source = _read_source(target, key, spec)
        module: Any = _module_of_file(target, source, key, spec)
        where = f"the file {target}"
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise ValueError(f"{key} = {spec!r}: cannot import module '{target}': {e}") from None
        where = f"module '{target}'"
    fn = getattr(module, fn_name, None)
    if fn is None:
        names = sorted(
            n for n, v in vars(module).items() if inspect.isfunction(v) and not n.startswith("_")
        )
        has = f" (it defines {', '.join(names)})" if names else ""
        raise ValueError(f"{key} = {spec!r}: {where} has no function '{fn_name}'{has}")
    if not callable(fn):
        raise ValueError(
            f"{key} = {spec!r}: '{fn_name}' in {where} is not a function but "
            f"{type(fn).__name__} {fn!r:.40}"
        )
    return fn


def read_files(specs: Iterable[str]) -> dict[str, str]:
    """The text of each reward file among `specs` (path -> text), read here to travel with the
    actors; a file that is missing here is left to load_function's error."""
    out = {}
    for spec in specs:
        if is_file_spec(spec):
            path = spec.rpartition(":")[0]
            try:
                out[path] = _read_source(path, "reward.function", spec)
            except ValueError:
                continue
    return out
