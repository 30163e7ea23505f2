"""The package: one import namespace (instructray.*) that installs beside the ecosystem, and an
import graph without circles."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from import_graph import FOLDERS, OLD_NAMES, REPO_ROOT, circles, graph, modules

HF_KERNELS = "kernels==0.17.2"  # Hugging Face's hub-kernels package, from the package index
PYCACHE = shutil.ignore_patterns("__pycache__", "*.pyc")
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]


def test_the_circle_finder_finds_a_circle():
    # a -> b -> c -> a is one circle; d -> a hangs off it; e -> e is a module importing itself
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert circles(edges) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_in_the_project():
    edges = graph()
    assert len(edges) > 80 and sum(map(len, edges.values())) > 250  # the test sees the imports
    assert circles(edges) == []


def test_nothing_imports_the_old_top_level_names():
    """`kernels` is also Hugging Face's package; `orchestrator` and `actors` are others' too."""
    files = [*modules().values(), *sorted((REPO_ROOT / "tests").rglob("*.py"))]
    wrong = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            wrong += [f"{path}:{node.lineno} {n}" for n in names if n.split(".")[0] in OLD_NAMES]
    assert not wrong, "\n".join(wrong)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built from a copy of the clone's package files."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, src / name)
    for folder in FOLDERS.values():
        shutil.copytree(folder, src / folder.name, ignore=PYCACHE)
    build = [*PIP, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist")]
    subprocess.run([*build, str(src)], check=True, capture_output=True, text=True)
    (found,) = (tmp / "dist").glob("instructray-*.whl")
    return found


@pytest.fixture(scope="module")
def site(wheel, tmp_path_factory) -> Path:
    """A fresh target holding the wheel and Hugging Face's `kernels`, both --no-deps."""
    target = tmp_path_factory.mktemp("site")
    install = [*PIP, "install", "--no-deps", "--target", str(target), str(wheel), HF_KERNELS]
    result = subprocess.run(install, capture_output=True, text=True)
    assert result.returncode == 0, f"pip could not install {HF_KERNELS}: {result.stderr[-2000:]}"
    return target


def _python(code: str, *path: Path, cwd: Path) -> list[str]:
    """Lines a fresh interpreter prints that sees `path` and the venv's libraries only: no site
    hooks, so not the editable install of this clone."""
    paths = os.pathsep.join([*map(str, path), sysconfig.get_paths()["purelib"]])
    run = subprocess.run(
        [sys.executable, "-S", "-c", code],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": paths},
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout.splitlines()


def test_the_wheel_holds_the_namespace_only_and_every_module(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    dist_info = "-".join(wheel.name.split("-")[:2]) + ".dist-info"
    outside = [n for n in names if n.split("/")[0] not in ("instructray", dist_info)]
    assert not outside, outside
    expected = {
        m.replace(".", "/") + ("/__init__.py" if p.name == "__init__.py" else ".py")
        for m, p in modules().items()
    }
    assert expected - set(names) == set(), "missing from the wheel (pyproject.toml's packages)"
    assert "instructray/orchestrator/labeling/page.html" in names  # package-data
    entry_points = zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode()
    assert "instructray = instructray.orchestrator.cli:main" in entry_points


def test_the_wheel_installs_beside_hugging_faces_kernels(wheel, site, tmp_path):
    """Hugging Face's `kernels` (which transformers looks for) once shared our kernels/ folder."""
    assert (site / "kernels" / "__init__.py").exists()  # theirs
    assert (site / "instructray" / "kernels" / "__init__.py").exists()  # ours
    code = (
        "import instructray, instructray.kernels as ours, kernels as theirs\n"
        "import instructray.orchestrator.cli, instructray.actors.learner.actor\n"
        "print(instructray.__version__, ours.__file__, theirs.__file__)\n"
        "print(callable(ours.compute_gae), callable(theirs.get_kernel))\n"
    )
    lines = _python(code, site, cwd=tmp_path)
    version, ours, theirs = lines[0].split()
    assert Path(ours) == site / "instructray" / "kernels" / "__init__.py"
    assert Path(theirs) == site / "kernels" / "__init__.py"
    assert wheel.name.startswith(f"instructray-{version}-")
    assert lines[1] == "True True"


def test_a_clone_first_on_the_path_runs_its_own_code_beside_theirs(site):
    """A job submitted from a clone: its upload comes first on the path, before an installed
    copy. `instructray.*` is the clone's code; a bare `kernels` is still Hugging Face's."""
    code = (
        "import instructray.kernels as ours, instructray.actors.rollout.actor, kernels as theirs\n"
        "print(ours.__file__, theirs.__file__, callable(theirs.get_kernel))\n"
    )
    lines = _python(code, REPO_ROOT, site, cwd=REPO_ROOT)
    ours, theirs, callable_ = lines[0].split()
    assert Path(ours) == REPO_ROOT / "kernels" / "__init__.py"
    assert Path(theirs) == site / "kernels" / "__init__.py"
    assert callable_ == "True"


def test_a_clone_after_an_installed_wheel_imports_without_a_loop(wheel, tmp_path):
    """The wheel's `instructray` comes first and the clone's root after it: a bare `kernels`
    (transformers probes it) is the clone's folder, the one thing of that name, imported once."""
    target = tmp_path / "site"
    install = [*PIP, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)]
    subprocess.run(install, check=True, capture_output=True, text=True)
    code = "import kernels, instructray\nprint(kernels.__file__, instructray.__file__)\n"
    [line] = _python(code, target, REPO_ROOT, cwd=tmp_path)
    bare, package = line.split()
    assert Path(bare) == REPO_ROOT / "kernels" / "__init__.py"
    assert Path(package) == target / "instructray" / "__init__.py"
