"""The labeling service inside another process (a pipeline's driver), and simulated labelers that
rank through its HTTP API as people do.

- `Service`: the app on uvicorn in a background thread, started and stopped with the round.
- `Bots`: N labelers, each a thread that asks for a task, ranks it with a labeler function
  (`pipeline.labeler`'s contract: (prompt, responses) -> indices best first, ties in a list) and
  sends the ranking, until told to stop or no task is left.
- `wait_for_rankings`: blocks until a batch holds enough rankings, saying how far it is, and
  stops with one line at its timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from instructray.kernels import tie_groups
from instructray.orchestrator.labeling.store import Store

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
POLL_S = 1.0


class LabelingTimeout(Exception):
    """Too few rankings arrived in time; the message says how many and what to do."""


class Service:
    """`create_app(store)` served by uvicorn on host:port in a daemon thread."""

    def __init__(self, store: Store, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        from instructray.orchestrator.labeling.app import create_app

        config = uvicorn.Config(create_app(store), host=host, port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="labeling-service", daemon=True)
        self.host = host

    @property
    def url(self) -> str:
        sockets = [s for server in self.server.servers for s in server.sockets]
        return f"http://{self.host}:{sockets[0].getsockname()[1]}"

    def start(self) -> Service:
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError(
                    "labeling: the service stopped as it started (is the port free?)"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"labeling: the service did not start in {START_TIMEOUT_S:.0f} s"
                )
            time.sleep(0.05)
        logger.info("labeling: the labelers' page is at %s/", self.url)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


class Bots:
    """Simulated labelers ranking through the HTTP API with `rank(prompt, texts)`."""

    def __init__(self, url: str, tokens: list[str], rank: Callable[[str, list[str]], Any]):
        self.url, self.rank = url, rank
        self.stopping = threading.Event()
        self.errors: list[str] = []
        self.threads = [
            threading.Thread(target=self._run, args=(t,), name=f"labeling-bot-{i}", daemon=True)
            for i, t in enumerate(tokens)
        ]

    def start(self) -> Bots:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=30)

    def _run(self, token: str) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=30) as http:
            while not self.stopping.is_set():
                try:
                    r = http.get("/api/tasks/next")
                    if r.status_code == 204:  # nothing to rank now: look again soon
                        self.stopping.wait(POLL_S)
                        continue
                    r.raise_for_status()
                    task = r.json()
                    texts = [a["text"] for a in task["answers"]]
                    groups = tie_groups(self.rank(task["prompt"], texts), len(texts))
                    ids = [[task["answers"][i]["id"] for i in g] for g in groups]
                    r = http.post(f"/api/tasks/{task['task_id']}/ranking", json={"ranking": ids})
                    if r.status_code >= 400 and r.status_code not in (409, 410):
                        r.raise_for_status()
                except httpx.TransportError:
                    self.stopping.wait(POLL_S)  # the service is away: ask again
                except Exception as e:  # noqa: BLE001 - a bot that fails says why, once
                    self.errors.append(f"{type(e).__name__}: {e}")
                    return


def wait_for_rankings(
    store: Store,
    batch: str,
    wanted: int,
    timeout_s: float,
    progress: Callable[[dict[str, Any]], None] | None = None,
    poll_s: float = POLL_S,
) -> dict[str, Any]:
    """Block until `batch` holds `wanted` rankings; `progress(status)` after each look (the
    store's status of the batch). LabelingTimeout after timeout_s, saying how far it got."""
    start = time.monotonic()
    while True:
        status = store.status(batch)
        if progress is not None:
            progress(status)
        if status["rankings"] >= wanted:
            return status
        waited = time.monotonic() - start
        if waited >= timeout_s:
            raise LabelingTimeout(
                f"labeling: {status['rankings']} of {wanted} rankings of {batch} after "
                f"{waited:.0f} s (labeling.timeout_s); the rankings given are kept: resume with "
                f"--run.resume=auto to wait on"
            )
        time.sleep(min(poll_s, max(0.0, timeout_s - waited)))
