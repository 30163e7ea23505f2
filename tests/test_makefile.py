"""`make` builds .venv from a supported Python: $PYTHON when given, else the newest of
python3.12, python3.11, python3.10 that runs, else one line that says what to install."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _make(
    tmp_path: Path, *args: str, path: str | None = None, dry_run: bool = False
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": path or os.environ["PATH"]}
    for inherited in ("PYTHON", "MAKEFLAGS", "MAKELEVEL", "MFLAGS"):  # from a `make test` above
        env.pop(inherited, None)
    venv = f"VENV={tmp_path / 'venv'}"
    return subprocess.run(
        [
            "make",
            "-s",
            *(["-n"] if dry_run else []),
            "-C",
            str(REPO_ROOT),
            "python-venv",
            venv,
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
    )


def _stub(folder: Path, name: str, body: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(f"#!/bin/sh\n{body}\n")
    (folder / name).chmod(0o755)


def test_the_newest_python_that_runs_is_taken(tmp_path):
    stubs = tmp_path / "bin"
    # python3.12 is a shim that does not run (pyenv's, for a version not selected); python3.11
    # and python3.10 run: the newer is taken.
    _stub(stubs, "python3.12", "echo 'pyenv: python3.12: command not found' >&2; exit 127")
    _stub(stubs, "python3.11", f'exec {sys.executable} "$@"')
    _stub(stubs, "python3.10", f'exec {sys.executable} "$@"')
    # -n: the recipe as make would run it, with the Python it chose (the venv is not built: every
    # fresh `make test` builds one)
    result = _make(tmp_path, path=f"{stubs}{os.pathsep}{os.environ['PATH']}", dry_run=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("py='python3.11';")


def test_no_supported_python_is_one_line_saying_what_to_install(tmp_path):
    result = _make(tmp_path, "SUPPORTED=3.99 3.98")
    assert result.returncode != 0
    [line] = [x for x in result.stderr.splitlines() if not x.startswith("make: ***")]
    assert line == (
        "make: InstructRay needs Python 3.10, 3.11 or 3.12 (with its venv module); none of "
        "python3.99 python3.98 runs here: install one, or set PYTHON=/path/to/python"
    )
    assert not (tmp_path / "venv").exists()


def test_a_python_given_that_is_not_supported_is_named(tmp_path):
    stubs = tmp_path / "bin"
    _stub(stubs, "python3.9", "echo 3.9.18")
    result = _make(tmp_path, f"PYTHON={stubs / 'python3.9'}")
    assert result.returncode != 0
    assert (
        f"make: PYTHON={stubs / 'python3.9'} is Python 3.9.18; InstructRay needs" in result.stderr
    )
    result = _make(tmp_path, f"PYTHON={tmp_path / 'nope'}")
    assert f"make: PYTHON={tmp_path / 'nope'} does not run; InstructRay needs" in result.stderr
    assert not (tmp_path / "venv").exists()
