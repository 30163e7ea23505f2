"""`instructray label ...`: the labeling service and its database from the command line.

    instructray label serve --db URL [--host 127.0.0.1] [--port 8600]
    instructray label add-labeler NAME --db URL [--admin]      (prints the token, last line)
    instructray label publish --db URL --answers FILE [--overlap N] [--batch NAME]
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
    add = command("add-labeler", "add a labeler (or an admin); prints the token once")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="may publish, export and see status")
    publish = command("publish", "publish tasks: a prompt and K answers each")
    publish.add_argument(
        "--answers",
        required=True,
        help='JSONL of {"prompt" or "messages", "responses": [K texts]}, with '
        'optional "user_id", "provenance", "response_provenance", "gold"',
    )
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


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (LabelingError, DataError, OSError, RuntimeError) as e:
        text = e.message if isinstance(e, LabelingError) else str(e)
        print(f"instructray label {args.command}: error: {text}", file=sys.stderr)
        return 2


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from instructray.orchestrator.labeling.app import create_app

    store = Store(
        db_url(args.db),
        ttl_s=args.ttl_s,
        rate_per_min=args.rate_per_min,
        gold_every=args.gold_every,
    )
    if args.host not in LOOPBACK:
        logger.warning(
            "label serve: listening on %s: anyone who reaches it can try tokens; put TLS in "
            "front of it",
            args.host,
        )
    print(f"instructray label: serving http://{args.host}:{args.port}/ ({store.url})", flush=True)
    try:
        uvicorn.run(create_app(store), host=args.host, port=args.port, log_level="warning")
    finally:
        store.close()
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
    rows: list[Any] = list(load_rows(args.answers, "train", key="--answers"))
    store = Store(db_url(args.db))
    try:
        ids = store.publish(rows, overlap=args.overlap, batch=args.batch)
    finally:
        store.close()
    print(f"published {len(ids)} tasks (ids {ids[0]}..{ids[-1]})" if ids else "published 0 tasks")
    return 0


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
