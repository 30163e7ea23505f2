"""`instructray STAGE --config FILE [--section.key=value ...]` for each stage of STAGES (sft, rm,
ppo, pipeline, eval, demo, bench, doctor), and the Ray job commands `instructray {submit,status,
logs,stop,scale}` (orchestrator/jobs.py), and the labeling service's `instructray label ...`
(orchestrator/labeling/commands.py)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
from pathlib import Path
from typing import Any

from instructray.actors.remote import RemoteError
from instructray.orchestrator.cluster import PlacementError
from instructray.orchestrator.config import (
    ConfigError,
    describe_fields,
    load_config,
    normalize_overrides,
    validate_config,
)
from instructray.orchestrator.config.precision import resolve_precision
from instructray.orchestrator.console import close_bars
from instructray.orchestrator.data import DataError
from instructray.orchestrator.labeling.service import LabelingTimeout
from instructray.orchestrator.ppo.numerics import NonFiniteError
from instructray.orchestrator.preflight import preflight

# stage -> (one-line description, "module:function" that runs it with a validated Config)
STAGES: dict[str, tuple[str, str]] = {
    "sft": (
        "supervised fine-tuning on demonstrations",
        "instructray.orchestrator.supervised:run_sft",
    ),
    "rm": ("train the K-wise ranking reward model", "instructray.orchestrator.supervised:run_rm"),
    "ppo": (
        "PPO against the reward model with KL to the SFT model",
        "instructray.orchestrator.ppo.run:run_ppo",
    ),
    "pipeline": (
        "SFT -> RM -> PPO in one run folder",
        "instructray.orchestrator.pipeline:run_pipeline",
    ),
    "eval": (
        "evaluate a policy on held-out prompts",
        "instructray.orchestrator.demo.evaluate:run_eval",
    ),
    "demo": ("the InstructGPT story in miniature", "instructray.orchestrator.demo.run:run_demo"),
    "bench": (
        "PPO steps at fixed settings; prints seconds and tokens/s",
        "instructray.orchestrator.ppo.bench:run_bench",
    ),
    "doctor": (
        "check the GPU path on this cluster: tiny PPO runs, each timed; prints what passed",
        "instructray.orchestrator.doctor:run_doctor",
    ),
}


# `instructray demo` is `make demo`: the demo stage's defaults are the shipped demo config's
# (an explicit --config and overrides still win); the doctor's, its tiny runs'. Found beside the
# package (a checkout, an editable install) or in the working directory (a Ray job's upload, the
# image's WORKDIR).
DEFAULT_CONFIGS = {
    "demo": Path("deploy/configs/demo-tiny-cpu.yaml"),
    "doctor": Path("deploy/configs/doctor-tiny.yaml"),
}


class UserError(Exception):
    """An error the user can fix; the CLI prints its one-line message without a traceback."""


# Errors whose message is the whole story for the user: printed on one line, no traceback.
USER_ERRORS: tuple[type[Exception], ...] = (
    ConfigError,
    PlacementError,
    UserError,
    DataError,
    RemoteError,
    NonFiniteError,
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    ValueError,
    LabelingTimeout,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="instructray",
        description="InstructGPT-style RLHF (SFT, reward model, PPO) on Ray.",
    )
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    parser.epilog = (
        "Ray jobs: instructray submit STAGE --config FILE [--follow]; "
        "instructray {status,logs,stop} JOB; instructray scale RUN_FOLDER|JOB --engines N. "
        "Labeling: instructray label {serve,add-labeler,publish,export,status,bench}."
    )
    for stage, (doc, _) in STAGES.items():
        p = sub.add_parser(
            stage,
            help=doc,
            description=f"instructray {stage}: {doc}.",
            epilog="Config fields (set in --config YAML or as --section.key=value):\n\n"
            + describe_fields(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("--config", metavar="FILE", help="YAML config; fields not set keep defaults")
        p.add_argument(
            "--print-config", action="store_true", help="print the resolved config, exit"
        )
        if stage == "bench":
            _add_plan_arguments(p)
    return parser


def _add_plan_arguments(p: argparse.ArgumentParser) -> None:
    """`bench --plan`: the step time of --config's shapes on H100s, on paper (runs nothing)."""
    p.add_argument(
        "--plan",
        action="store_true",
        help="print lockstep vs pipelined step time for --config's shapes on 2, 4, 8 engines "
        "(orchestrator/ppo/plan.py), scaled from a CPU bench run; starts nothing",
    )
    p.add_argument(
        "--plan-from",
        metavar="RUN",
        help="a CPU bench run folder (or its metrics.jsonl) to scale from; default: the "
        "bf16 bench figures at 30M in docs/results/index.md (2026-12-03)",
    )
    p.add_argument(
        "--plan-params",
        metavar="N",
        type=float,
        help="the policy's parameters (e.g. 7.6e9); default: from model.policy's name",
    )


def _stage_defaults(stage: str) -> Path | None:
    if stage not in DEFAULT_CONFIGS:
        return None
    shipped = DEFAULT_CONFIGS[stage]
    for root in (Path(__file__).resolve().parents[1], Path.cwd()):
        if (root / shipped).is_file():
            logging.getLogger("instructray").info(
                "%s: defaults from the shipped %s, then --config, then overrides", stage, shipped
            )
            return root / shipped
    raise UserError(
        f"the {stage}'s settings ({shipped}) are neither beside the package nor in the working "
        "directory; pass --config FILE"
    )


def resolve_runner(stage: str):
    """The function that runs a stage: "module:function" in STAGES, imported."""
    module, _, fn = STAGES[stage][1].partition(":")
    return getattr(importlib.import_module(module), fn)


JOB_COMMANDS = ("submit", "status", "logs", "stop", "scale")


def _job_command(argv: list[str]) -> int:
    from instructray.orchestrator import jobs

    try:
        return jobs.main(argv, list(STAGES), normalize_overrides)
    except (jobs.JobError, *USER_ERRORS) as e:
        print(f"instructray {argv[0]}: error: {e}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in JOB_COMMANDS:
        return _job_command(argv)
    if argv and argv[0] == "label":
        from instructray.orchestrator.labeling.commands import main as label_main

        return label_main(argv[1:])
    args, rest = _parser().parse_known_args(argv)
    debug = "--run.log_level=debug" in normalize_overrides(rest)  # before the config loads
    try:
        defaults = _stage_defaults(args.stage)
        cfg = load_config(args.config, normalize_overrides(rest), defaults)
        debug = cfg.run.log_level == "debug"
        validate_config(cfg, args.stage)
        resolve_precision(cfg)  # before config.yaml is written: the run folder records the choice
        if args.print_config:
            import yaml

            print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
            return 0
        if getattr(args, "plan", False):  # on paper: the config's inputs need not exist here
            from instructray.orchestrator.ppo.bench_plan import plan_report

            print(plan_report(cfg, args.plan_from, args.plan_params))
            return 0
        if not debug:  # transformers' bars (saving a tiny model): the stage's own bar is enough
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        preflight(cfg, args.stage)  # every input the stage reads, before Ray or any actor
        start = time.monotonic()
        _run_stage(args.stage, cfg)
        print(_done(args.stage, Path(cfg.run.output_dir), time.monotonic() - start))
    except Exception as e:
        if debug:
            raise
        what = "" if isinstance(e, USER_ERRORS) else f"{type(e).__name__}: "
        hint = "" if isinstance(e, USER_ERRORS) else " (--run.log_level=debug shows where)"
        text = " ".join(str(e).split()) or type(e).__name__
        # The last line on screen: Ray's actor logs were flushed when Ray stopped.
        print(f"instructray {args.stage}: error: {what}{text}{hint}", file=sys.stderr)
        return 2
    return 0


def _run_stage(stage: str, cfg: Any) -> None:
    """Run the stage, then stop the Ray it started, which flushes the actors' last log lines:
    the line printed after them (what the run wrote, or its error) is the last on screen. A
    Ray that was running before (a test's, a notebook's) is left as it is."""
    import ray

    ours = not ray.is_initialized()
    try:
        resolve_runner(stage)(cfg)
    finally:
        if ours and ray.is_initialized():
            ray.shutdown()
        close_bars()


# What a finished stage's folder holds that a person opens first, in this order.
RESULTS = ("report.md", "plot.png", "eval.json", "doctor.json", "final", "metrics.jsonl")


def _done(stage: str, folder: Path, seconds: float) -> str:
    """The last line of a stage that succeeded: how long it took and what it wrote where."""
    found = [name + ("/" if (folder / name).is_dir() else "") for name in RESULTS]
    found = [name for name in found if (folder / name.rstrip("/")).exists()]
    what = f" ({', '.join(found)})" if found else ""
    return f"instructray {stage}: done in {seconds / 60:.1f} min; wrote {folder}{what}"


if __name__ == "__main__":
    sys.exit(main())
