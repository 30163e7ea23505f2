import inspect
import os
import subprocess
import sys
from pathlib import Path

from instructray import kernels

REPO_ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = (
    "ray",
    "vllm",
    "deepspeed",
    "transformers",
    "instructray.orchestrator",
    "instructray.actors",
)


def test_import_kernels_loads_no_framework():
    code = (
        "import sys, instructray.kernels\n"
        f"forbidden = {FORBIDDEN!r}\n"
        "loaded = {m + '.' for m in sys.modules}\n"
        "print(sorted({f for f in forbidden if any(m.startswith(f + '.') for m in loaded)}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "[]", result.stdout


def test_public_api_is_exported_and_documented():
    assert sorted(kernels.__all__) == sorted(set(kernels.__all__))
    for name in kernels.__all__:
        obj = getattr(kernels, name)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            assert obj.__doc__ and obj.__doc__.strip(), name
    module_names = {
        name
        for module in vars(kernels).values()
        if inspect.ismodule(module)
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isfunction(obj) or inspect.isclass(obj))
        and obj.__module__ == module.__name__
    }
    assert module_names <= set(kernels.__all__), module_names - set(kernels.__all__)
