"""Scale requests: how `instructray scale` (or `instructray.orchestrator.jobs.scale` from Python)
tells a running PPO driver how many rollout engines to hold. The driver reads them between steps.

- A run on this machine: `<run folder>/scale.json`, written whole (a rename), read each step.
- A Ray job: a key in the cluster's internal key-value store, named by the job's Ray job id,
  written by a one-line job submitted to the same cluster (the job API is all a user's
  `--address` reaches).

Each request carries an id: a request is applied once, and one that was dropped (it could not
be placed within run.start_timeout_s) is not tried again until a new one comes.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SCALE_FILE = "scale.json"
KV_PREFIX = "instructray:scale:"
KV_NAMESPACE = "instructray"


def new_request(engines: int) -> dict[str, Any]:
    """{"engines", "id"}: one request (engines a whole number >= 1)."""
    if isinstance(engines, bool) or not isinstance(engines, int) or engines < 1:
        raise ValueError(f"--engines must be a whole number >= 1, got {engines!r}")
    return {"engines": engines, "id": uuid.uuid4().hex}


def write_request(folder: Path, request: dict[str, Any]) -> None:
    """Put a request into a run folder, whole (written aside, then renamed over the last)."""
    if not (folder / "config.yaml").exists():
        raise FileNotFoundError(f"{folder} is not a run folder (no config.yaml)")
    tmp = folder / f".{SCALE_FILE}.{request['id']}"
    tmp.write_text(json.dumps(request))
    os.replace(tmp, folder / SCALE_FILE)


def kv_key(ray_job_id: str) -> str:
    return KV_PREFIX + ray_job_id


class ScaleRequests:
    """The driver's side: the newest request not yet seen, from the run folder or the job's
    key. `poll()` -> engines asked for, or None."""

    def __init__(self, folder: Path | None):
        self.path = None if folder is None else Path(folder) / SCALE_FILE
        self.key: str | None = None
        self.seen: set[str] = set()
        try:
            import ray

            if ray.is_initialized():
                self.key = kv_key(ray.get_runtime_context().get_job_id())
        except Exception:  # no Ray job id: the run folder only
            self.key = None

    def _read(self) -> list[dict[str, Any]]:
        found = []
        if self.path is not None and self.path.exists():
            try:
                found.append(json.loads(self.path.read_text()))
            except (OSError, ValueError) as e:
                logger.warning("scale: ignoring %s: %s", self.path, e)
        if self.key is not None:
            from ray.experimental.internal_kv import _internal_kv_get

            try:
                value = _internal_kv_get(self.key, namespace=KV_NAMESPACE)
            except Exception:  # the store unreachable a moment: read again next step
                value = None
            if value:
                found.append(json.loads(value))
        return found

    def poll(self) -> int | None:
        newest = None
        for request in self._read():
            rid = str(request.get("id", ""))
            if rid in self.seen:
                continue
            self.seen.add(rid)
            engines = request.get("engines")
            if isinstance(engines, int) and not isinstance(engines, bool) and engines >= 1:
                newest = engines
            else:
                logger.warning("scale: ignoring a request for %r engines", engines)
        return newest
