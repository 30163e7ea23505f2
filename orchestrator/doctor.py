"""`instructray doctor`: the GPU path checked on the cluster at hand, for the first person with
GPUs. Runs, in order and each timed, the checks of CHECKS (what each needs and proves) on tiny
models built on the fly (no downloads), and prints what passed, failed or was skipped (a check
that needs more GPUs than Ray sees says how many). On a machine with no GPU only the first runs:
the CPU path, end to end.

Each check is a short PPO run from the doctor's config (deploy/configs/doctor-tiny.yaml, --config,
overrides) plus its own settings (or, for the big sync, one engine), in a sub-folder of
run.output_dir; doctor.json there holds every result. The exit status is 2 when a check failed.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from instructray.actors.remote import RemoteError
from instructray.orchestrator.config import Config, load_config, validate_config
from instructray.orchestrator.config.precision import resolve_precision

logger = logging.getLogger(__name__)

ON_GPU = ["--learner.gpus_per_rank=1", "--model.dtype=auto", "--model.attn_implementation=auto"]


class DoctorFailed(RemoteError):
    """A check failed (its line in the table says how); the CLI prints it in one line."""


@dataclass
class Check:
    name: str
    gpus: int  # GPUs the cluster must have (0: runs anywhere)
    proves: str
    run: Callable[[Config, Path], str]  # -> what it saw; raises when the check fails


@dataclass
class Result:
    name: str
    status: str  # passed, failed, skipped
    seconds: float
    detail: str


def check_config(base: Config, folder: Path, overrides: list[str]) -> Config:
    """A check's config: the doctor's (deploy/configs/doctor-tiny.yaml, --config, overrides)
    with the check's own settings on top, its run folder inside the doctor's; validated, its
    precision resolved as a run's is (a GPU check asks for auto: bf16 where the GPU has it)."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "doctor-base.yaml"
    path.write_text(yaml.safe_dump(base.to_dict(), sort_keys=False))
    cfg = load_config(path, [*overrides, f"--run.output_dir={folder}"])
    validate_config(cfg, "ppo")
    return resolve_precision(cfg)


def role_devices(roles: Any) -> dict[str, list[str]]:
    """Where each actor of a started run computes: {role: [device per actor]}."""
    from instructray.actors.remote import wait_all

    calls = {
        "rollout": [e.model_device.remote() for e in roles.engines],
        "reward": [r.device_name.remote() for r in roles.rewards],
        "reference": [r.device_name.remote() for r in roles.references],
    }
    out = {}
    for role, refs in calls.items():
        names = [f"{role} {i}" for i in range(len(refs))]
        out[role] = wait_all(refs, "device", names, roles.cfg.run.timeout_s)
    out["learner"] = roles.learner.device_names()
    return {role: devices for role, devices in out.items() if devices}


def ppo_steps(cfg: Config, steps: int) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """Start the run's roles, take `steps` PPO steps (each row appended to metrics.jsonl in
    run.output_dir: the phases' seconds among them), stop them; -> (rows, role devices)."""
    from instructray.orchestrator.output.metrics import append_metrics
    from instructray.orchestrator.ppo.roles import Roles
    from instructray.orchestrator.ppo.trainer import PPOTrainer

    roles = Roles.start(cfg)
    rows = []
    try:
        devices = role_devices(roles)
        trainer = PPOTrainer(cfg, roles)
        for step in range(steps):
            rows.append(trainer.step(step))
            append_metrics(Path(cfg.run.output_dir) / "metrics.jsonl", rows[-1])
    finally:
        roles.shutdown()
    return rows, devices


def expect_devices(devices: dict[str, list[str]], kind: str) -> str:
    """Every actor on a device of this kind (cpu, cuda), or an error naming the ones that are
    not; -> the devices in words."""
    wrong = [
        f"{role} {i} on {d}"
        for role, ds in devices.items()
        for i, d in enumerate(ds)
        if d.split(":")[0] != kind
    ]
    if wrong:
        raise RuntimeError(f"not on {kind}: {', '.join(wrong)}")
    return "; ".join(f"{role} {', '.join(ds)}" for role, ds in devices.items())


def synced(rows: list[dict[str, Any]]) -> str:
    """The last row's sync, in words (each sync was verified, or the step raised)."""
    last = rows[-1]
    return (
        f"{len(rows)} step(s), weight version {last['weight_sync/version']} verified "
        f"(mean log-prob diff {last['weight_sync/mean_logprob_diff']:.2g})"
    )


def one_step(base: Config, folder: Path, kind: str, overrides: list[str]) -> str:
    """One PPO step with these settings; every role's model on a device of this kind."""
    rows, devices = ppo_steps(check_config(base, folder, overrides), 1)
    return f"{expect_devices(devices, kind)}; {synced(rows)}"


def nccl_sync(base: Config, folder: Path) -> str:
    from instructray.actors.faults import ENV

    # The engine dies as its 2nd sync starts (learner rank 0 is broadcasting): the others must
    # fail by the group's timeout, not hang, and the group re-forms around the restarted engine.
    markers = Path(tempfile.mkdtemp(prefix="doctor-faults-"))
    overrides = [
        *ON_GPU,
        "--learner.backend=nccl",
        "--rollout.weight_sync=nccl",
        "--run.timeout_s=120",
        "--run.max_actor_restarts=1",
    ]
    cfg = check_config(base, folder, overrides)
    before = os.environ.get(ENV)
    os.environ[ENV] = f"rollout:sync:2@{markers}"
    try:
        rows, devices = ppo_steps(cfg, 2)
    finally:
        if before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = before
    restarts = rows[-1]["actor_restarts"]
    if restarts < 1:
        raise RuntimeError("the engine was not killed mid-sync (no actor restart counted)")
    return f"{expect_devices(devices, 'cuda')}; {synced(rows)}; {restarts} engine restart(s)"


def sync_4gib(base: Config, folder: Path) -> str:
    import ray

    from instructray.actors.remote import wait_all
    from instructray.actors.sequences import load_tokenizer
    from instructray.actors.tiny_models import resolve
    from instructray.actors.weight_sync import fingerprint_mismatch, fingerprints_of
    from instructray.orchestrator.sampler import Sampler, saved_tensors

    big = Path(resolve("tiny://sync-4gib"))
    size = sum(t.numel() * t.element_size() for _, t in saved_tensors(big))
    if size <= 4 * 2**30:
        raise RuntimeError(f"the model holds {size / 2**30:.2f} GiB, not more than 4")
    cfg = check_config(base, folder, [*ON_GPU, "--model.dtype=float32"])
    sampler = Sampler(cfg, load_tokenizer(str(big)), str(big))
    try:
        sampler.load(str(big))  # the whole state dict again, in buckets
        [state] = wait_all(
            [sampler.engine.weights_state.remote([[1, 2, 3, 4]])],
            "sync-4gib",
            ["rollout engine 0"],
            cfg.run.timeout_s,
        )
        device = ray.get(sampler.engine.model_device.remote(), timeout=cfg.run.timeout_s)
    finally:
        sampler.close()
    mismatch = fingerprint_mismatch(fingerprints_of(saved_tensors(big)), state["fingerprints"][0])
    if mismatch:
        raise RuntimeError(f"the engine loaded other weights: {mismatch}")
    expect_devices({"rollout": [device]}, "cuda")
    bucket = cfg.rollout.sync_bucket_mib
    return f"{size / 2**30:.2f} GiB in buckets of {bucket:g} MiB, every tensor bit for bit"


CHECKS = [
    Check(
        "cpu-step",
        0,
        "a PPO step on CPU: every role on the CPU, its sync verified",
        functools.partial(one_step, kind="cpu", overrides=["--learner.gpus_per_rank=0"]),
    ),
    Check(
        "gpu-step",
        1,
        "a PPO step colocated on one GPU (engines started first): every role on it",
        functools.partial(one_step, kind="cuda", overrides=[*ON_GPU, "--run.colocate=true"]),
    ),
    Check(
        "nccl-sync",
        4,
        "NCCL weight sync; an engine killed as a sync starts: the group re-forms, the run goes on",
        nccl_sync,
    ),
    Check(
        "tp2",
        5,
        "an engine of tensor_parallel_size 2 (vLLM's Ray workers, a GPU a bundle), synced",
        functools.partial(
            one_step, kind="cuda", overrides=[*ON_GPU, "--rollout.tensor_parallel_size=2"]
        ),
    ),
    Check(
        "sync-4gib",
        1,
        "an object-store sync of more than 4 GiB (a 1.2B fp32 model) in buckets, bit for bit",
        sync_4gib,
    ),
]


def cluster_gpus(cfg: Config) -> float:
    """GPUs the Ray cluster has (joined, or a local one started here)."""
    import ray

    from instructray.orchestrator.cluster import connect

    logger.info("doctor: ray: %s", connect(cfg))
    return float(ray.cluster_resources().get("GPU", 0.0))


def run_checks(cfg: Config, checks: list[Check] | None = None) -> list[Result]:
    """Every check in order (those needing more GPUs than the cluster has, skipped), each
    timed; doctor.json in run.output_dir holds the results."""
    folder = Path(cfg.run.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    gpus = cluster_gpus(cfg)
    results = []
    for check in CHECKS if checks is None else checks:
        if check.gpus > gpus:
            why = f"needs {check.gpus} GPU(s), the Ray cluster has {gpus:g}"
            results.append(Result(check.name, "skipped", 0.0, why))
            logger.info("doctor: %s skipped: %s", check.name, why)
            continue
        logger.info("doctor: %s: %s", check.name, check.proves)
        start = time.perf_counter()
        try:
            detail, status = check.run(cfg, folder / check.name), "passed"
        except Exception as e:  # a failed check is a result; the others still run
            detail, status = f"{type(e).__name__}: {' '.join(str(e).split())}", "failed"
        results.append(Result(check.name, status, time.perf_counter() - start, detail))
        logger.info("doctor: %s %s in %.1f s", check.name, status, results[-1].seconds)
    (folder / "doctor.json").write_text(json.dumps([asdict(r) for r in results], indent=1))
    return results


def report(results: list[Result]) -> str:
    """The results as a table a person reads."""
    width = max(len(r.name) for r in results)
    lines = [
        f"{r.status:8} {r.name:{width}} "
        + (f"{r.seconds:7.1f} s  " if r.status != "skipped" else " " * 11)
        + r.detail
        for r in results
    ]
    return "\n".join(lines)


def run_doctor(cfg: Config) -> None:
    """`instructray doctor`: run the checks, print the table; a failed check fails the command."""
    results = run_checks(cfg)
    print(report(results), flush=True)
    failed = [r.name for r in results if r.status == "failed"]
    if failed:
        raise DoctorFailed(f"{len(failed)} check(s) failed: {', '.join(failed)} (above)")
