"""The driver's layers import one way: config/ -> data/, output/ -> actors/ -> cluster,
model_specs, model_check -> sampler, ppo/, supervised, preflight, jobs -> pipeline, cli ->
demo/. Every import counts, also one inside a function (a lazy import is still an edge a reader
must follow)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
LAYERS = {
    "orchestrator.config": 0,
    "orchestrator.data": 1,
    "orchestrator.output": 1,
    "actors": 2,
    "orchestrator.cluster": 3,
    "orchestrator.model_specs": 3,
    "orchestrator.model_check": 3,
    "orchestrator.preflight": 4,
    "orchestrator.sampler": 4,
    "orchestrator.ppo": 4,
    "orchestrator.supervised": 4,
    "orchestrator.pipeline": 5,
    "orchestrator.jobs": 4,
    "orchestrator.cli": 5,
    "orchestrator.demo": 6,
}
# Named exceptions, each with its reason.
ALLOWED = {
    # The `tiny://world` recipe trains its tokenizer on the demo world's text: moving the import
    # would change what `instructray sft --model.policy=tiny://world` builds.
    ("actors.tiny_models", "orchestrator.demo.world"),
}


def _unit(module: str) -> str:
    """The layer a module belongs to: its longest prefix in LAYERS."""
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    if module == "orchestrator":  # the package itself: lazy_face only
        return "orchestrator.config"
    raise AssertionError(f"{module} is in no layer; add it to LAYERS")


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)  # and `from package import module`:
            found.update(
                f"{node.module}.{a.name}" for a in node.names if _known(f"{node.module}.{a.name}")
            )
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.split(".")[0] in ("orchestrator", "actors")}


def _module(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _known(module: str) -> bool:
    path = REPO_ROOT / Path(*module.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def test_imports_go_down_the_layers_only():
    wrong = []
    for folder in ("orchestrator", "actors"):
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            me = _module(path)
            for target in filter(_known, _imports(path)):
                if (me, target) in ALLOWED or _unit(target) == _unit(me):
                    continue
                if LAYERS[_unit(target)] >= LAYERS[_unit(me)]:
                    wrong.append(f"{me} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_actors_import_only_the_config_and_the_run_outputs():
    seen = {
        (_module(path), target)
        for path in sorted((REPO_ROOT / "actors").glob("*.py"))
        for target in _imports(path)
        if target.startswith("orchestrator")
    }
    outside = {
        (me, t)
        for me, t in seen
        if _unit(t) not in ("orchestrator.config", "orchestrator.output") and (me, t) not in ALLOWED
    }
    assert not outside, outside
    assert any(t.startswith("orchestrator.output") for _, t in seen)  # the test sees imports
