"""The project's import graph, read from its source (no module is imported): every import
counts, also one inside a function or under TYPE_CHECKING, since a reader must follow it too."""

from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# The package's folders in a clone, each under its name in the one namespace.
FOLDERS = {
    "instructray": REPO_ROOT / "instructray",
    "instructray.orchestrator": REPO_ROOT / "orchestrator",
    "instructray.actors": REPO_ROOT / "actors",
    "instructray.kernels": REPO_ROOT / "kernels",
}
OLD_NAMES = ("orchestrator", "actors", "kernels")  # the top-level names before the namespace


def modules() -> dict[str, Path]:
    """Every module of the package: {dotted name: its file}."""
    found = {}
    for package, folder in FOLDERS.items():
        for path in sorted(folder.rglob("*.py")):
            if package == "instructray" and path.parent != folder:
                continue
            parts = path.relative_to(folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            found[".".join((package, *parts))] = path
    return found


def imports(path: Path, known: set[str]) -> set[str]:
    """The known modules a file imports: `from a import b` is an import of module a.b where that
    is one, else of a (its face); `import a.b` of a.b, else of its longest known prefix."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                found.add(name if name in known else node.module)
        elif isinstance(node, ast.Import):
            found.update(_longest_known(alias.name, known) for alias in node.names)
    return found


def _longest_known(name: str, known: set[str]) -> str:
    parts = name.split(".")
    prefixes = (".".join(parts[:n]) for n in range(len(parts), 0, -1))
    return next((p for p in prefixes if p in known), name)


def graph() -> dict[str, set[str]]:
    """{module: the project's modules it imports} (the parent packages Python initializes on
    the way are not counted: they never wait on the module that imports them)."""
    known = modules()
    return {me: (imports(path, set(known)) & set(known)) - {me} for me, path in known.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found
