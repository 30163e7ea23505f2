"""Test-only fault injection: actors that die, or compute non-finite numbers, once each.

INSTRUCTRAY_FAULT="FAULT[,FAULT...]@MARKER_DIR", each FAULT one of
- `ROLE:METHOD:N`: the first actor of ROLE to reach its N-th call of METHOD (counted per
  process, from 1) exits at once, as a crash would (`os._exit`, no cleanup);
- `nan:ROLE:METHOD:N`: that call computes a non-finite number (where the method says);
- `hang:ROLE:METHOD:N`: that call never returns (the caller's timeout must catch it);
- `skip:rollout:sync:N`, `half:rollout:sync:N`: that weight update of an engine is broken: it
  takes the new version but loads nothing (skip) or every other tensor (half);
- `stale:rollout:repack:N`: that weight update leaves the CPU build's packed copy of a tied
  LM head at the old weights (the loader took in every tensor: only the log-probs show it);
- `kill:ROLE:PHASE:STEP`: the driver kills actor 0 of ROLE (`ray.kill`, Ray may restart it) as
  PPO step STEP enters PHASE (generate, score, train, sync), while the actor may be idle.
A marker file in MARKER_DIR makes each fault fire once per run, so a restarted actor serves
normally. The driver forwards the variable to its actors. Unset (always, outside tests), every
call is a no-op.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

ENV = "INSTRUCTRAY_FAULT"
_calls: dict[tuple[str, str], int] = {}


BREAKS = ("nan", "skip", "half", "stale")  # faults the method itself carries out


def inject(role: str, method: str) -> str:
    """Count a call of role.method; die or hang here if a fault says so. -> the kind of fault
    this call must carry out itself ("nan": compute a non-finite number; "skip", "half": break
    a weight update), else ""."""
    spec = os.environ.get(ENV, "")
    if not spec:
        return ""
    key = (role, method)
    _calls[key] = _calls.get(key, 0) + 1
    faults, _, marker_dir = spec.partition("@")
    carried = ""
    for fault in faults.split(","):
        if fault.startswith("kill:"):
            continue
        *kind, want_role, want_method, n = fault.split(":")  # kind: [], [one of BREAKS], ["hang"]
        if (want_role, want_method) == key and int(n) == _calls[key]:
            if _first(marker_dir, fault):
                if kind == ["hang"]:
                    time.sleep(1e9)
                if not kind or kind[0] not in BREAKS:
                    os._exit(1)
                carried = kind[0]
    return carried


def kills_at(phase: str, step: int) -> list[str]:
    """Roles whose actor 0 the driver kills as `step` enters `phase` (each fault once)."""
    spec = os.environ.get(ENV, "")
    if not spec:
        return []
    faults, _, marker_dir = spec.partition("@")
    out = []
    for fault in faults.split(","):
        if not fault.startswith("kill:"):
            continue
        _, role, want_phase, want_step = fault.split(":")
        if (want_phase, int(want_step)) == (phase, step) and _first(marker_dir, fault):
            out.append(role)
    return out


def _first(marker_dir: str, name: str) -> bool:
    """True the first time name is claimed in marker_dir (atomic across processes)."""
    try:
        (Path(marker_dir) / name.replace(":", "-")).touch(exist_ok=False)
        return True
    except FileExistsError:
        return False
