"""The embedded default: with no cluster named, `instructray` starts a local Ray whose dashboard,
job API and GCS listen on 127.0.0.1 only, with token authentication on; a failing stage's error
is the last line on screen."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e

PROBE = """
import json, os, sys, time, psutil, ray
from instructray.orchestrator import cli
from instructray.orchestrator.cluster import connect


def stage(cfg):
    where = connect(cfg)
    ctx = ray.get_runtime_context()
    mine = {p.pid for p in psutil.Process().children(recursive=True)}
    listening = sorted({
        c.laddr.ip for c in psutil.net_connections("inet")
        if c.status == psutil.CONN_LISTEN and c.pid in mine
    })
    print("PROBE " + json.dumps({
        "where": where,
        "gcs": ctx.gcs_address,
        "listening": listening,
        "auth": os.environ.get("RAY_AUTH_MODE", ""),
    }), flush=True)

    @ray.remote
    def chatty():  # still talking when the stage fails, as actors are
        for _ in range(100):
            print("CHATTY an actor's words", file=sys.stderr, flush=True)
            time.sleep(0.05)

    chatty.remote()
    time.sleep(1.0)
    raise ValueError("the stage failed while its actors ran")


cli.resolve_runner = lambda name: stage
sys.exit(cli.main(["demo", "--run.output_dir=" + sys.argv[1]]))
"""


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1, a dual-stack socket
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def test_local_ray_listens_on_loopback_only_and_a_failure_is_the_last_line(tmp_path):
    """A stage run by `instructray` starts a local Ray on loopback (dashboard, job API, GCS),
    names its dashboard's address; when the stage fails, the Ray it started is stopped, which
    flushes the actors' logs, and the error is the last line on screen."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["HOME"] = str(tmp_path)  # its token file lands here, not in the user's ~/.ray
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path / "run")],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    [line] = [x for x in done.stdout.splitlines() if x.startswith("PROBE ")]
    probe = json.loads(line[len("PROBE ") :])
    assert probe["gcs"].startswith("127.0.0.1:")
    assert probe["where"].startswith("a new local Ray; dashboard: http://127.0.0.1:"), probe
    assert probe["where"] != f"a new local Ray; dashboard: http://{probe['gcs']}"
    assert probe["listening"] and all(_loopback(ip) for ip in probe["listening"]), probe
    assert probe["auth"] == "token"  # Ray turned token authentication on
    assert (tmp_path / ".ray" / "auth_token").exists()
    err = done.stderr.strip().splitlines()
    assert err[-1] == "instructray demo: error: the stage failed while its actors ran", err[-5:]
    assert any("CHATTY an actor's words" in x for x in err[:-1]), done.stderr[-3000:]
