"""The labeling service on a Ray cluster: a Ray Serve application named `labeling`, which the
dashboard's Serve view lists with its replicas and their requests.

    instructray label serve --db URL --ray [--address auto] [--replicas N] [--port 8600]
    labeling.serve: ray          (a pipeline whose labeler is `human`)

Each replica is the same ASGI app as `instructray label serve` (app.create_app) over its own
Store; Serve's HTTP proxy listens on host:port. Replicas share nothing but the database, so more
than one needs a database every replica reaches (PostgreSQL); an SQLite file's one replica is
placed on the node that holds the file.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

import httpx

from instructray.orchestrator.labeling.requests import LabelingError

logger = logging.getLogger(__name__)

APP_NAME = "labeling"
READY_TIMEOUT_S = 120.0


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _deployment(db: str, replicas: int, store_args: dict[str, Any]) -> Any:
    import ray
    from ray import serve

    from instructray.orchestrator.labeling.app import create_app
    from instructray.orchestrator.labeling.store import Store

    options: dict[str, Any] = {"num_cpus": 0}
    if db.startswith("sqlite"):  # the file is on this node: so is the replica
        options["resources"] = {f"node:{ray.util.get_node_ip_address()}": 0.001}

    @serve.deployment(name=APP_NAME, num_replicas=replicas, ray_actor_options=options)
    @serve.ingress()
    class Labeling:
        def __init__(self, url: str, kwargs: dict[str, Any]):
            self.store = Store(url, **kwargs)

        def __serve_build_asgi_app__(self):
            return create_app(self.store)

    return Labeling.bind(db, store_args)


class ServeApp:
    """The service as a Ray Serve application on the Ray cluster this process is connected to;
    `Service`'s interface (start, url, stop)."""

    def __init__(
        self,
        db: str,
        host: str = "127.0.0.1",
        port: int = 0,
        replicas: int = 1,
        **store_args: Any,
    ):
        if replicas > 1 and db.startswith("sqlite"):
            raise LabelingError(
                400,
                f"--replicas {replicas}: replicas share the database; an SQLite file serves one "
                "(use PostgreSQL: --db postgresql+psycopg://...)",
            )
        self.db, self.host, self.replicas, self.store_args = db, host, replicas, store_args
        self.port = port or free_port(host)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ServeApp:
        import ray
        from ray import serve

        if not ray.is_initialized():  # serve.start would start a Ray of its own
            raise RuntimeError("labeling: join the Ray cluster (ray.init) before serving on it")
        serve.start(http_options={"host": self.host, "port": self.port})
        app = _deployment(self.db, self.replicas, self.store_args)
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
        self._wait_ready()
        logger.info("labeling: Ray Serve app %r at %s/", APP_NAME, self.url)
        return self

    def _wait_ready(self) -> None:
        """Until the proxy answers for the app (the page), or READY_TIMEOUT_S."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                r = httpx.get(self.url + "/", timeout=5)
                if r.status_code == 200:
                    return
                last = f"HTTP {r.status_code}"
            except httpx.HTTPError as e:
                last = type(e).__name__
            time.sleep(0.5)
        raise TimeoutError(
            f"labeling: Ray Serve app {APP_NAME!r} not answering at {self.url}/ after "
            f"{READY_TIMEOUT_S:.0f} s ({last}); see the dashboard's Serve view"
        )

    def stop(self) -> None:
        from ray import serve

        try:
            serve.delete(APP_NAME)
        except Exception as e:  # noqa: BLE001 - the cluster may be going down with us
            logger.warning("labeling: could not delete the Ray Serve app: %s", e)
