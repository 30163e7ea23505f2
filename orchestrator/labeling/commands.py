"""`instructray label ...`: the labeling service and its database from the command line.

    instructray label serve --db URL [--host 127.0.0.1] [--port 8600]
    instructray label serve --db URL --ray [--address auto] [--replicas N]   (Ray Serve)
    instructray label add-labeler NAME --db URL [--admin]      (prints the token, last line)
    instructray label publish --db URL --answers FILE [--overlap N] [--batch NAME]
    instructray label publish --db URL --prompts FILE --model DIR --k K [--limit N]
                              [--config FILE] [--section.key=value ...]   (sampled by vLLM)
    instructray label export --db URL [--out FILE] [--since-id N] [--gold] [--consensus]
    instructray label status --db URL [--batch NAME]
    instructray label bench [--db URL] [--labelers 50] [--tasks 500] [--k 4] [--overlap 2]

--db is an SQLAlchemy URL (sqlite:///labels.db, postgresql+psycopg://user@host/db) or a path,
which means an SQLite file there.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from instructray.orchestrator.config import ConfigError, load_config, normalize_overrides
from instructray.orchestrator.data.schema import DataError
from instructray.orchestrator.data.sources import load_rows
from instructray.orchestrator.labeling.requests import LabelingError
from instructray.orchestrator.labeling.store import Store, db_url

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8600
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="instructray label",
        allow_abbrev=False,
        description="The labeling service: people rank sampled answers, with ties; the reward "
        "model trains on the export.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = commands.add_parser(name, help=help, description=help, allow_abbrev=False)
        p.add_argument("--db", required=True, help="SQLAlchemy URL, or a path (an SQLite file)")
        return p

    serve = command("serve", "serve the labelers' page and the HTTP API")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT)
    serve.add_argument(
        "--assignment-ttl-s",
        dest="ttl_s",
        type=float,
        default=3600.0,
        help="seconds an assignment waits for its ranking before it returns to the pool",
    )
    serve.add_argument(
        "--rate-per-min",
        type=int,
        default=0,
        help="rankings a labeler may send a minute (0: no limit)",
    )
    serve.add_argument(
        "--gold-every",
        type=int,
        default=10,
        help="one gold task every N tasks a labeler gets (0: none)",
    )
    serve.add_argument(
        "--ray",
        action="store_true",
        help="serve it on a Ray cluster as a Ray Serve app (the dashboard's Serve view shows it)",
    )
    serve.add_argument(
        "--address",
        default="auto",
        help="with --ray: the cluster to join (default: the one running here, or RAY_ADDRESS)",
    )
    serve.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="with --ray: copies of the app (more than one needs PostgreSQL)",
    )
    add = command("add-labeler", "add a labeler (or an admin); prints the token once")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="may publish, export and see status")
    publish = command("publish", "publish tasks: a prompt and K answers each")
    source = publish.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--answers",
        help='JSONL of {"prompt" or "messages", "responses": [K texts]}, with '
        'optional "user_id", "provenance", "response_provenance", "gold"',
    )
    source.add_argument(
        "--prompts",
        help="prompts (data.prompts' forms: JSONL, a dataset folder) whose K answers a rollout "
        "engine samples from --model; config overrides (--rollout.temperature=0.7, ...) follow",
    )
    publish.add_argument("--model", help="with --prompts: the model folder to sample")
    publish.add_argument("--k", type=int, default=4, help="with --prompts: answers per prompt")
    publish.add_argument("--limit", type=int, default=0, help="with --prompts: at most N (0: all)")
    publish.add_argument("--config", help="with --prompts: a config file (rollout.*, model.*, ...)")
    publish.add_argument("--overlap", type=int, default=1, help="labelers per task")
    publish.add_argument("--batch", default="", help="a name for these tasks")
    export = command("export", "the rankings as JSONL in the reward model's schema")
    export.add_argument("--out", help="file to write (default: standard output)")
    export.add_argument("--since-id", type=int, default=0, help="rankings after this id only")
    export.add_argument("--gold", action="store_true", help="with the gold tasks' rankings")
    export.add_argument(
        "--consensus",
        action="store_true",
        help="one row per task: its rankings merged by ranked pairs",
    )
    status = command("status", "tasks, rankings, labelers, agreement and flagged labelers")
    status.add_argument("--batch", default=None)
    bench = commands.add_parser(
        "bench",
        help="rankings/s and latency with N labelers at once",
        description="rankings/s and latency with N labelers at once",
        allow_abbrev=False,
    )
    bench.add_argument("--db", default=None, help="an empty database (default: a temporary file)")
    bench.add_argument("--labelers", type=int, default=50)
    bench.add_argument("--tasks", type=int, default=500)
    bench.add_argument("--k", type=int, default=4, help="answers per task")
    bench.add_argument("--overlap", type=int, default=2, help="labelers per task")
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    """The command line; `--section.key=value` overrides (publish --prompts only) in
    args.overrides."""
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    args.overrides = normalize_overrides(rest)
    if rest and not (args.command == "publish" and args.prompts):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args


def main(argv: list[str]) -> int:
    args = parse(argv)
    try:
        return COMMANDS[args.command](args)
    except (LabelingError, DataError, ConfigError, OSError, RuntimeError) as e:
        text = e.message if isinstance(e, LabelingError) else str(e)
        print(f"instructray label {args.command}: error: {text}", file=sys.stderr)
        return 2


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from instructray.orchestrator.labeling.app import create_app

    store_args = {
        "ttl_s": args.ttl_s,
        "rate_per_min": args.rate_per_min,
        "gold_every": args.gold_every,
    }
    if args.host not in LOOPBACK:
        logger.warning(
            "label serve: listening on %s: anyone who reaches it can try tokens; put TLS in "
            "front of it",
            args.host,
        )
    if args.ray:
        return _serve_on_ray(args, store_args)
    store = Store(db_url(args.db), **store_args)
    print(f"instructray label: serving http://{args.host}:{args.port}/ ({store.url})", flush=True)
    try:
        uvicorn.run(create_app(store), host=args.host, port=args.port, log_level="warning")
    finally:
        store.close()
    return 0


def _serve_on_ray(args: argparse.Namespace, store_args: dict[str, Any]) -> int:
    """The app on the Ray cluster at --address (Ray Serve) until Ctrl-C or SIGTERM, which
    delete it."""
    import signal
    import threading

    import ray

    from instructray.orchestrator.labeling.on_ray import APP_NAME, ServeApp

    app = ServeApp(db_url(args.db), args.host, args.port, args.replicas, **store_args)
    ray.init(address=args.address, logging_level=logging.WARNING, log_to_driver=False)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        app.start()
        print(
            f"instructray label: serving {app.url}/ as Ray Serve app {APP_NAME!r} "
            f"({args.replicas} replica(s), {app.db.split('://')[0]}); Ctrl-C stops it",
            flush=True,
        )
        stop.wait()
    finally:
        app.stop()
        ray.shutdown()
    print(f"instructray label: Ray Serve app {APP_NAME!r} deleted", flush=True)
    return 0


def _add_labeler(args: argparse.Namespace) -> int:
    store = Store(db_url(args.db))
    try:
        token = store.add_labeler(args.name, admin=args.admin)
    finally:
        store.close()
    role = "admin" if args.admin else "labeler"
    print(f"added {role} {args.name!r}; their token (shown once, stored hashed):")
    print(token)
    return 0


def _publish(args: argparse.Namespace) -> int:
    if args.prompts:
        rows = _sample(args)
    else:
        rows = list(load_rows(args.answers, "train", key="--answers"))
    store = Store(db_url(args.db))
    try:
        ids = store.publish(rows, overlap=args.overlap, batch=args.batch)
    finally:
        store.close()
    print(f"published {len(ids)} tasks (ids {ids[0]}..{ids[-1]})" if ids else "published 0 tasks")
    return 0


def _sample(args: argparse.Namespace) -> list[dict[str, Any]]:
    """--prompts sampled by one rollout engine (vLLM, on Ray) from --model: K answers per
    prompt, distinct, as tasks with their provenance."""
    from instructray.orchestrator.cluster import connect
    from instructray.orchestrator.config.precision import resolve_precision
    from instructray.orchestrator.labeling.round import task_row
    from instructray.orchestrator.sampler import sample_for_ranking

    if not args.model:
        raise LabelingError(400, "--model: required with --prompts (a model folder to sample)")
    model = Path(args.model).expanduser().resolve()
    if not (model / "config.json").is_file():
        raise LabelingError(400, f"--model: {args.model} is not a model folder (no config.json)")
    if args.k < 2 or args.limit < 0:
        raise LabelingError(400, f"--k {args.k} / --limit {args.limit}: K >= 2, limit >= 0")
    cfg = load_config(args.config, args.overrides)
    cfg.model.policy, cfg.data.prompts = str(model), args.prompts
    p = cfg.pipeline
    p.samples_per_prompt = p.min_samples_per_prompt = args.k
    p.rank_prompts, p.ranking_models = args.limit or 2**31, []
    resolve_precision(cfg)
    print(f"instructray label: sampling {args.k} answers per prompt from {model}", flush=True)
    import ray

    ours = not ray.is_initialized()
    connect(cfg)
    try:
        sampled = sample_for_ranking(cfg, str(model))
    finally:
        if ours:
            ray.shutdown()
    r = cfg.rollout
    provenance = {
        "model": str(model),
        "temperature": r.temperature,
        "max_new_tokens": r.max_new_tokens,
        "seed": cfg.run.seed,
    }
    return [task_row(row, provenance) for row in sampled]


def _export(args: argparse.Namespace) -> int:
    store = Store(db_url(args.db))
    try:
        rows = store.export(since_id=args.since_id, gold=args.gold, consensus=args.consensus)
    finally:
        store.close()
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {len(rows)} rankings to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _status(args: argparse.Namespace) -> int:
    store = Store(db_url(args.db))
    try:
        print(json.dumps(store.status(args.batch)))
    finally:
        store.close()
    return 0


def _bench(args: argparse.Namespace) -> int:
    from instructray.orchestrator.labeling.bench import report, run_bench

    db = db_url(args.db) if args.db else None
    print(report(run_bench(db, args.labelers, args.tasks, args.k, args.overlap)))
    return 0


COMMANDS = {
    "serve": _serve,
    "add-labeler": _add_labeler,
    "publish": _publish,
    "export": _export,
    "status": _status,
    "bench": _bench,
}
