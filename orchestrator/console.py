"""What the driver's console shows of a run. Ray forwards every line its actors print; the lines
that a working run prints but that read like failures are left out here, each with the reason
(they stay in the actors' log files, in the Ray session's logs/ folder; `run.log_level: debug`
shows them all). Also where the dashboard's token is when Ray asks for one."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

# A forwarded line holding one of these is left out of the console; why each means nothing.
DROPPED: dict[str, str] = {
    "PreemptionWatcher": "Ray Train's controller notes how its own watcher actor would restart "
    "(an error-level line from Ray's core worker; Ray's issue 53727)",
    "deepspeed_shm_comm_op built successfully": "DeepSpeed's CPU all-reduce kernel, built by "
    "each rank as it starts (a print)",
    "Reporting training result": "Ray Train's note of each epoch's report: metrics.jsonl has "
    "the numbers",
    "doesn't include CPU backend. Disabling Triton": "vLLM's CPU build runs without Triton, "
    "as it should (a print at its import)",
    "NUMA binding: Using MEMBIND policy": "torch binds an engine's memory to its CPU's NUMA "
    "node, as vLLM's CPU build asks (a C++ warning)",
    "LD_PRELOAD": "vLLM's CPU build suggests a faster allocator (tcmalloc, libiomp); a speed "
    "hint, not a fault",
    "Setting up process group for": "Ray Train's note as each worker joins the process group",
    "saved /tmp/": "a stage's intermediate checkpoint, before Ray Train copies it",
}
HANDLER = "ray_print_logs"  # the name Ray's driver gives its printer of forwarded lines
BAR_LINE_EVERY_S = 60.0  # where the console is a file (a Ray job's log), a bar's line this often


def dropped(line: str) -> bool:
    """A line left out: a DROPPED one, or a blank one (what a library's bar leaves)."""
    return not line.strip() or any(text in line for text in DROPPED)


def filter_forwarded_lines() -> bool:
    """Leave DROPPED lines out of what Ray prints of the actors' output in this driver (the
    printer Ray installs at ray.init, wrapped). False where Ray has no such printer (no
    log_to_driver, or another Ray version): then every line prints, as before."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    printers = [h for name, h in dispatcher.handlers if name == HANDLER]
    if len(printers) != 1 or getattr(printers[0], "filters_lines", False):
        return bool(printers)
    printer = printers[0]

    def filtered(batch: dict[str, Any]) -> None:
        lines = [line for line in batch.get("lines", []) if not dropped(line)]
        if lines:
            printer({**batch, "lines": lines})

    filtered.filters_lines = True  # type: ignore[attr-defined]
    dispatcher.remove_handler(HANDLER)
    dispatcher.add_handler(HANDLER, filtered)
    return True


def token_hint() -> str:
    """Where the dashboard's token is, when Ray's token authentication is on; else ''."""
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    if not is_token_auth_enabled():
        return ""
    if os.environ.get("RAY_AUTH_TOKEN"):
        where = "the RAY_AUTH_TOKEN environment variable"
    else:
        path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
        where = f"the file {path}"
    return f" (it asks for a token: `ray get-auth-token` prints it, from {where})"


def close_bars() -> None:
    """Close the progress bars Ray's bar manager still draws in this driver (a bar whose last
    update did not arrive before Ray stopped), so that nothing redraws after the stage's last
    line. Ray keeps them in its (internal) manager; a Ray without one has nothing to close."""
    from ray.experimental import tqdm_ray

    manager = getattr(tqdm_ray, "_manager", None)
    if manager is None:
        return
    with manager.lock:
        for group in manager.bar_groups.values():
            for bar in group.bars_by_uuid.values():
                bar.close()
            group.bars_by_uuid.clear()


class _BarLines:
    """What Ray's bar manager does with the progress bars' states in this driver, instead of
    drawing them: where the console is a file (a Ray job's logs, `make demo > log`), a bar that
    redraws on every update and every forwarded line (Ray's manager clears and redraws its bars
    around each) writes a new line each time. Here each bar writes one line when it closes and one
    every `every_s` seconds while it runs; a state that arrives after its bar closed (Ray
    forwards some twice) is dropped."""

    def __init__(self, stream: TextIO, every_s: float = BAR_LINE_EVERY_S):
        self.stream, self.every_s = stream, every_s
        self.started: dict[str, float] = {}
        self.shown: dict[str, float] = {}
        self.closed: set[str] = set()

    def __call__(self, state: dict[str, Any]) -> None:
        from tqdm import tqdm

        uuid, now = state["uuid"], time.monotonic()
        if uuid in self.closed:
            return
        started = self.started.setdefault(uuid, now)
        if state.get("closed"):
            self.closed.add(uuid)
            self.started.pop(uuid, None)
            self.shown.pop(uuid, None)
        elif now - self.shown.get(uuid, started) < self.every_s:
            return
        else:
            self.shown[uuid] = now
        line = tqdm.format_meter(
            state["x"],
            state["total"],
            now - started,
            prefix=state["desc"],
            unit=state["unit"],
            ncols=100,
        )
        print(line, file=self.stream, flush=True)


def quiet_bars(stream: TextIO | None = None) -> bool:
    """Ray's bar manager in this driver draws each bar with live updates on a terminal, and writes
    _BarLines' few lines where the console is a file; either way a state that arrives after its
    bar closed no longer opens it again (a bar that would then redraw under every later line).
    False where this Ray has no such manager."""
    from ray.experimental import tqdm_ray

    stream = stream or sys.stderr
    manager = tqdm_ray.instance()
    locked = getattr(manager, "_process_state_update_locked", None)
    if locked is None or getattr(locked, "instructray", False):
        return locked is not None
    if not stream.isatty():
        handle = _BarLines(stream)
    else:
        closed: set[str] = set()

        def handle(state: dict[str, Any]) -> None:
            if state["uuid"] in closed:
                return
            locked(state)
            if state.get("closed"):  # a bar that opened on its closing state closes too
                closed.add(state["uuid"])
                for group in manager.bar_groups.values():
                    if group.has_bar(state["uuid"]):
                        group.close_bar(state)

    handle.instructray = True  # type: ignore[attr-defined]
    manager._process_state_update_locked = handle
    return True
