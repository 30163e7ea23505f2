"""`instructray submit / status / logs / stop`: Ray job submission for InstructRay stages.

`instructray submit STAGE --config FILE [--section.key=value ...]` checks the config and runs
the stage's pre-flight (orchestrator/preflight.py) here first (a typo or a bad data row fails in
seconds, before the cluster is contacted; `--no-preflight` skips the pre-flight, for inputs that
exist only on the cluster), then submits
`instructray STAGE --config FILE ...` as a Ray job with the runtime_env of
`deploy/runtime_env.yaml` (this folder uploaded as the job's working directory). The same can be
done by hand with `ray job submit`; these commands only save typing and print where to look.

The cluster is `--address`, else RAY_ADDRESS, else http://127.0.0.1:8265 (the dashboard of a
local head, or the head's dashboard tunnelled to this machine). With token authentication on,
Ray's client sends the token of RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH / ~/.ray/auth_token.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from instructray.orchestrator.config.functions import SHIPPED_PACKAGE
from instructray.orchestrator.output.scale_requests import (
    KV_NAMESPACE,
    kv_key,
    new_request,
    write_request,
)

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
RUNTIME_ENV = Path("deploy/runtime_env.yaml")
# Keys that name a credential (their last word): their values would be readable by anyone who
# can list jobs. `rollout.max_new_tokens` or `reward.url_token_env` (a variable's name) are not.
SECRET_WORDS = re.compile(
    r"(?:^|[._-])(?:api[_-]?key|token|secret|password|passwd|credentials?)$", re.IGNORECASE
)
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class JobError(Exception):
    """A job command failed; the message says why in one line."""


def address_of(explicit: str | None) -> str:
    """The job API address: the flag, else RAY_ADDRESS when it is an http(s) address, else local."""
    if explicit:
        return explicit
    env = os.environ.get("RAY_ADDRESS", "")
    return env if env.startswith(("http://", "https://")) else DEFAULT_ADDRESS


def client(address: str) -> Any:
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as e:  # connection refused, 401/403 without a token, wrong version
        raise JobError(f"cannot reach the Ray job API at {address}: {_one_line(e)}") from None


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:400]


def load_runtime_env(path: Path) -> dict[str, Any]:
    """deploy/runtime_env.yaml as a dict (a clear error when it is missing or not a mapping).
    The shipped file is found beside the package when the working directory has none; its
    relative working_dir then means the repository it lies in, not the working directory."""
    if not path.exists() and not path.is_absolute():
        beside = Path(__file__).resolve().parents[1] / path
        if beside.is_file():
            env = load_runtime_env(beside)
            if not Path(env.get("working_dir", ".")).is_absolute():
                env["working_dir"] = str(beside.parents[1] / env.get("working_dir", "."))
            return env
    if not path.exists():
        raise JobError(
            f"runtime_env file {path} does not exist here nor beside the installed package"
        )
    env = yaml.safe_load(path.read_text()) or {}
    if not isinstance(env, dict):
        raise JobError(f"{path}: a runtime_env must be a YAML mapping")
    return env


def check_no_secrets(args: list[str]) -> None:
    """Refuse entrypoint arguments that look like credentials."""
    for arg in args:
        if SECRET_WORDS.search(arg.split("=", 1)[0].lstrip("-")):
            raise JobError(
                f"refusing to put '{arg.split('=', 1)[0]}' on the job's command line, which "
                f"anyone who can list jobs can read; set it in the cluster's environment"
            )


def entrypoint(stage: str, config: str | None, overrides: list[str]) -> str:
    """The job's command: `instructray STAGE --config FILE overrides...`, quoted for a shell."""
    parts = ["instructray", stage]
    if config:
        parts += ["--config", config]
    return shlex.join(parts + overrides)


# The settings that name a file, folder or Hub name the stage reads (or, run.output_dir, writes).
PATH_KEYS = (
    "model.policy",
    "model.reward",
    "model.reference",
    "model.tokenizer",
    "data.demonstrations",
    "data.rankings",
    "data.prompts",
    "data.pretrain",
    "run.output_dir",
)


def run_preflight(cfg: Any, stage: str) -> None:
    """The pre-flight `instructray STAGE` runs before it starts, here before submitting. When
    what it refuses is a path that does not exist on this machine (it may on the cluster), the
    one-line refusal says how to skip it: a JobError ending in `--no-preflight`."""
    from instructray.orchestrator.preflight import preflight

    try:
        preflight(cfg, stage)
    except Exception as e:
        text = " ".join(str(e).split()) or type(e).__name__
        missing = _missing_here(cfg, text)
        if missing is None:
            raise
        raise JobError(
            f"{text} ({missing} is not on this machine: if it is on the cluster, submit with "
            "--no-preflight)"
        ) from None


def _missing_here(cfg: Any, text: str) -> str | None:
    """The first input of cfg that the error `text` names (by key or value) and that does not
    exist on this machine; None if there is none."""
    named = []
    for key in PATH_KEYS:
        section, name = key.split(".")
        named.append((key, getattr(getattr(cfg, section), name)))
    named += [("pipeline.ranking_models", spec) for spec in cfg.pipeline.ranking_models]
    for key, spec in named:
        if not spec or spec.startswith("tiny://") or Path(spec).exists():
            continue
        if spec in text or f"{key}:" in text:
            return spec
    return None


def function_files(cfg: Any) -> list[str]:
    """The files of the functions a config names as `path/to/file.py:function`."""
    from instructray.orchestrator.config import reward_sources
    from instructray.orchestrator.config.functions import is_file_spec

    specs = [*reward_sources(cfg), cfg.pipeline.labeler, cfg.data.prompt_map]
    return list(dict.fromkeys(s.rpartition(":")[0] for s in specs if s and is_file_spec(s)))


def ship_function_files(cfg: Any, runtime_env: dict[str, Any], folder: Path) -> None:
    """Copy each function file the config names into `folder`/SHIPPED_PACKAGE and add that to
    the job's runtime_env `py_modules`, unless the file lies inside the uploaded working
    directory: on the cluster the job finds it there by its file name
    (orchestrator/config/functions.py). Two files of one name are refused."""
    working_dir = Path(runtime_env.get("working_dir", ".")).resolve()
    package = folder / SHIPPED_PACKAGE
    shipped: dict[str, Path] = {}
    for path in map(Path, function_files(cfg)):
        if not path.is_file():
            continue  # on the cluster only (submitted with --no-preflight): found there
        if not path.is_absolute() and working_dir in path.resolve().parents:
            continue  # uploaded with the working directory, at the same relative path
        if path.name in shipped and shipped[path.name] != path.resolve():
            raise JobError(
                f"{path} and {shipped[path.name]}: two function files named {path.name}; rename "
                f"one to ship both with the job"
            )
        shipped[path.name] = path.resolve()
        package.mkdir(exist_ok=True)
        shutil.copyfile(path, package / path.name)
    if shipped:
        runtime_env["py_modules"] = [*runtime_env.get("py_modules", []), str(package)]


def submit(
    stage: str,
    config: str | None,
    overrides: list[str],
    address: str,
    runtime_env_path: Path = RUNTIME_ENV,
    submission_id: str | None = None,
    preflight: bool = True,
) -> str:
    """Check the config locally (and, with preflight, every input the stage reads, as
    `instructray STAGE` does before it starts), submit the stage as a Ray job; returns the job
    id. Nothing reaches the cluster before these checks pass."""
    from instructray.orchestrator.config import load_config, validate_config

    check_no_secrets(overrides)
    cfg = load_config(config, overrides)
    validate_config(cfg, stage)
    runtime_env = load_runtime_env(runtime_env_path)
    if config and not Path(config).is_absolute():
        # Relative config paths resolve inside the uploaded working directory.
        working_dir = Path(runtime_env.get("working_dir", "."))
        if not (working_dir / config).exists():
            raise JobError(
                f"config {config} is not inside the job's working directory {working_dir}; "
                f"give a path under it"
            )
    if preflight:
        run_preflight(cfg, stage)
    with tempfile.TemporaryDirectory(prefix="instructray-submit-") as folder:
        ship_function_files(cfg, runtime_env, Path(folder))  # uploaded by submit_job
        return client(address).submit_job(
            entrypoint=entrypoint(stage, config, overrides),
            runtime_env=runtime_env,
            submission_id=submission_id,
            metadata={"instructray_stage": stage},
        )


# The scale request's writer: a job of one line on the cluster (the job API is all --address
# reaches), with Ray alone: it runs in any image, with or without this package.
SCALE_WRITER = (
    "import ray, sys; ray.init(); "
    "from ray.experimental.internal_kv import _internal_kv_put; "
    "_internal_kv_put(sys.argv[1], sys.argv[2], overwrite=True, namespace=sys.argv[3])"
)


def put_scale_request(job_id: str, request: dict[str, Any], address: str, timeout_s: float) -> None:
    """Hand a running job's driver a scale request (orchestrator/ppo/scaling.py) under its Ray
    job id, through a one-line job; waits up to timeout_s for it to finish."""
    import json

    c = client(address)
    try:
        info = c.get_job_info(job_id)
    except Exception as e:
        raise JobError(f"job {job_id}: {_one_line(e)}") from None
    if str(info.status.value) != "RUNNING" or not info.job_id:
        raise JobError(f"job {job_id} is {info.status.value}, not running: nothing to scale")
    args = [kv_key(info.job_id), json.dumps(request), KV_NAMESPACE]
    writer = c.submit_job(entrypoint=shlex.join(["python", "-c", SCALE_WRITER, *args]))
    deadline = time.monotonic() + timeout_s
    while (state := str(c.get_job_status(writer).value)) not in TERMINAL:
        if time.monotonic() > deadline:
            raise JobError(f"scale: the request's writer job {writer} is still {state}")
        time.sleep(0.5)
    if state != "SUCCEEDED":
        raise JobError(
            f"scale: the request's writer job {writer} {state}: {c.get_job_logs(writer)}"
        )


def scale(target: str | Path, engines: int, address: str = "", timeout_s: float = 120.0) -> str:
    """Ask a running PPO run for `engines` rollout engines (applied between its steps); -> what
    was done, one line. target: a run folder (a run on this machine), or a Ray job id at
    `address` (the job API's, as for `instructray submit`)."""
    request = new_request(engines)
    folder = Path(target)
    if folder.is_dir():
        write_request(folder, request)
        return f"asked the run in {folder} for {engines} rollout engine(s)"
    if not re.fullmatch(r"[A-Za-z0-9_-]+", str(target)):
        raise FileNotFoundError(f"{target} is neither a run folder nor a job id")
    put_scale_request(str(target), request, address_of(address), timeout_s)
    return f"asked job {target} for {engines} rollout engine(s)"


def status(job_id: str, address: str) -> str:
    try:
        return str(client(address).get_job_status(job_id).value)
    except JobError:
        raise
    except Exception as e:
        raise JobError(f"job {job_id}: {_one_line(e)}") from None


def logs(job_id: str, address: str, follow: bool = False) -> None:
    c = client(address)
    try:
        if not follow:
            sys.stdout.write(c.get_job_logs(job_id))
            return

        async def tail() -> None:
            async for lines in c.tail_job_logs(job_id):
                sys.stdout.write(lines)
                sys.stdout.flush()

        asyncio.run(tail())
    except Exception as e:
        raise JobError(f"job {job_id}: {_one_line(e)}") from None


def stop(job_id: str, address: str, timeout_s: float = 60.0) -> str:
    """Ask the job to stop (SIGTERM to its driver) and wait for a final state."""
    c = client(address)
    try:
        c.stop_job(job_id)
        deadline = time.monotonic() + timeout_s
        while (state := str(c.get_job_status(job_id).value)) not in TERMINAL:
            if time.monotonic() > deadline:
                raise JobError(f"job {job_id} is still {state} {timeout_s:.0f} s after stop")
            time.sleep(1)
    except JobError:
        raise
    except Exception as e:
        raise JobError(f"job {job_id}: {_one_line(e)}") from None
    return state


def _parser(stages: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="instructray", description="Ray job commands.")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser(
        "submit",
        help="submit a stage as a Ray job",
        description="instructray submit STAGE --config FILE [--section.key=value ...]: check the "
        "config and the stage's inputs here, then run `instructray STAGE ...` as a Ray job on "
        "the cluster.",
    )
    s.add_argument("stage", choices=stages)
    s.add_argument("--config", metavar="FILE", help="YAML config, relative to this folder")
    s.add_argument("--address", help=f"job API (default: RAY_ADDRESS or {DEFAULT_ADDRESS})")
    s.add_argument("--runtime-env", default=str(RUNTIME_ENV), help="runtime_env YAML")
    s.add_argument("--submission-id", help="job id to use (default: Ray picks one)")
    s.add_argument("--follow", action="store_true", help="stream the job's logs until it ends")
    s.add_argument(
        "--no-preflight",
        dest="preflight",
        action="store_false",
        help="skip the pre-flight of the stage's inputs here (models, data, reward functions), "
        "for inputs that exist only on the cluster",
    )
    for name, doc in (
        ("status", "print a job's state"),
        ("logs", "print a job's logs"),
        ("stop", "stop a job (its driver gets SIGTERM)"),
    ):
        p = sub.add_parser(name, help=doc, description=f"instructray {name} JOB: {doc}.")
        p.add_argument("job_id", metavar="JOB")
        p.add_argument("--address", help=f"job API (default: RAY_ADDRESS or {DEFAULT_ADDRESS})")
        if name == "logs":
            p.add_argument("--follow", action="store_true", help="stream until the job ends")
    p = sub.add_parser(
        "scale",
        help="grow or shrink a running PPO run's rollout engines",
        description="instructray scale TARGET --engines N: ask a running PPO run (TARGET its run "
        "folder on this machine, or its Ray job id with --address) for N rollout engines; the "
        "driver applies it between steps (a new engine is verified before it serves).",
    )
    p.add_argument("target", metavar="TARGET", help="run folder or Ray job id")
    p.add_argument("--engines", type=int, required=True, help="rollout engines wanted (>= 1)")
    p.add_argument("--address", help=f"job API (default: RAY_ADDRESS or {DEFAULT_ADDRESS})")
    return parser


def main(argv: list[str], stages: list[str], normalize: Any) -> int:
    """Run one job command; returns the exit code (a failed followed job returns 1)."""
    args, rest = _parser(stages).parse_known_args(argv)
    address = address_of(args.address)
    if args.command != "submit" and rest:
        raise JobError(f"unexpected arguments: {' '.join(rest)}")
    if args.command == "submit":
        job_id = submit(
            args.stage,
            args.config,
            normalize(rest),
            address,
            Path(args.runtime_env),
            args.submission_id,
            args.preflight,
        )
        print(f"submitted job {job_id} to {address}")
        print(f"  dashboard: {address}/#/jobs/{job_id}")
        print(f"  logs:      instructray logs {job_id} --follow   (or: ray job logs {job_id} -f)")
        print(f"  stop:      instructray stop {job_id}")
        if args.follow:
            logs(job_id, address, follow=True)
            state = status(job_id, address)
            print(f"job {job_id}: {state}")
            return 0 if state == "SUCCEEDED" else 1
    elif args.command == "status":
        print(status(args.job_id, address))
    elif args.command == "logs":
        logs(args.job_id, address, args.follow)
    elif args.command == "stop":
        print(stop(args.job_id, address))
    elif args.command == "scale":
        print(scale(args.target, args.engines, address))
    return 0
