"""`instructray label bench`: how fast the labeling service takes rankings, measured as labelers
load it: a real server (`instructray label serve`, uvicorn) in its own process on loopback, N
labelers as concurrent HTTP clients that each ask for a task and rank it until none is left.
Prints rankings/s and the p50/p99 latency of both calls."""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from instructray.orchestrator.labeling.store import Store

START_TIMEOUT_S = 120.0
CALL_TIMEOUT_S = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    at = (len(ordered) - 1) * q
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


def _wait_until_up(url: str, proc: subprocess.Popen, log: Path) -> None:
    import httpx

    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"label bench: the server exited: {log.read_text()[-500:]}")
        try:
            if httpx.get(url + "/", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"label bench: no answer from the server at {url} after {START_TIMEOUT_S:.0f} s"
            )
        time.sleep(0.1)


async def _labeler(url: str, token: str, nexts: list[float], ranks: list[float]) -> int:
    import httpx

    done = 0
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=CALL_TIMEOUT_S) as http:
        while True:
            start = time.perf_counter()
            r = await http.get("/api/tasks/next")
            nexts.append(time.perf_counter() - start)
            if r.status_code == 204:
                return done
            r.raise_for_status()
            task = r.json()
            ranking = [[a["id"]] for a in task["answers"]]  # as shown: a strict order
            ranking[1:3] = [ranking[1] + ranking[2]]  # and a tie
            start = time.perf_counter()
            r = await http.post(f"/api/tasks/{task['task_id']}/ranking", json={"ranking": ranking})
            ranks.append(time.perf_counter() - start)
            r.raise_for_status()
            done += 1


def run_bench(
    db: str | None = None, labelers: int = 50, tasks: int = 500, k: int = 4, overlap: int = 2
) -> dict[str, Any]:
    """Publish `tasks` tasks of K answers (overlap each) to a fresh database (a temporary SQLite
    file, or `db`, an empty database's URL), serve them, and let `labelers` clients rank them
    all. -> the figures."""
    home = Path(tempfile.mkdtemp(prefix="instructray-label-bench-"))
    url_db = db or f"sqlite:///{home / 'bench.db'}"
    batch = f"bench-{secrets.token_hex(3)}"
    store = Store(url_db)
    try:
        tokens = [store.add_labeler(f"{batch}-{i}") for i in range(labelers)]
        store.publish(
            [
                {"prompt": f"Bench question {i}?", "responses": [f"answer {j}" for j in range(k)]}
                for i in range(tasks)
            ],
            overlap=overlap,
            batch=batch,
        )
    finally:
        store.close()
    port = _free_port()
    url, log = f"http://127.0.0.1:{port}", home / "serve.log"
    command = [
        sys.executable,
        "-m",
        "instructray.orchestrator.cli",
        "label",
        "serve",
        "--db",
        url_db,
        "--port",
        str(port),
        "--gold-every",
        "0",
    ]
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_until_up(url, proc, log)
        nexts: list[float] = []
        ranks: list[float] = []

        async def all_labelers() -> list[int]:
            return await asyncio.gather(*(_labeler(url, t, nexts, ranks) for t in tokens))

        start = time.perf_counter()
        done = sum(asyncio.run(all_labelers()))
        seconds = time.perf_counter() - start
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(home, ignore_errors=True)
    return {
        "database": url_db.split(":", 1)[0],
        "labelers": labelers,
        "tasks": tasks,
        "k": k,
        "overlap": overlap,
        "rankings": done,
        "seconds": seconds,
        "rankings_per_s": done / seconds,
        "rank_p50_ms": 1000 * _percentile(ranks, 0.5),
        "rank_p99_ms": 1000 * _percentile(ranks, 0.99),
        "next_p50_ms": 1000 * _percentile(nexts, 0.5),
        "next_p99_ms": 1000 * _percentile(nexts, 0.99),
    }


def report(figures: dict[str, Any]) -> str:
    f = figures
    return "\n".join(
        [
            f"label bench: {f['labelers']} labelers, {f['rankings']} rankings ({f['tasks']} tasks "
            f"x overlap {f['overlap']}, K = {f['k']}), {f['database']}, {f['seconds']:.1f} s",
            f"  rankings/s {f['rankings_per_s']:.1f}",
            f"  rank (POST): p50 {f['rank_p50_ms']:.0f} ms, p99 {f['rank_p99_ms']:.0f} ms",
            f"  next task (GET): p50 {f['next_p50_ms']:.0f} ms, p99 {f['next_p99_ms']:.0f} ms",
            json.dumps(f),
        ]
    )
