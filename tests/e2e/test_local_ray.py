"""The embedded default: with no cluster named, `instructray` starts a local Ray whose dashboard,
job API and GCS listen on 127.0.0.1 only, with token authentication on."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e

PROBE = """
import json, os, psutil, ray
from orchestrator.cluster import connect
from orchestrator.config import load_config
connect(load_config(None, []))
ctx = ray.get_runtime_context()
mine = {p.pid for p in psutil.Process().children(recursive=True)}
listening = sorted({
    c.laddr.ip for c in psutil.net_connections("inet")
    if c.status == psutil.CONN_LISTEN and c.pid in mine
})
print("PROBE " + json.dumps({
    "gcs": ctx.gcs_address,
    "listening": listening,
    "auth": os.environ.get("RAY_AUTH_MODE", ""),
}))
ray.shutdown()
"""


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1, a dual-stack socket
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def test_local_ray_listens_on_loopback_only(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["HOME"] = str(tmp_path)  # its token file lands here, not in the user's ~/.ray
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [line] = [x for x in done.stdout.splitlines() if x.startswith("PROBE ")]
    probe = json.loads(line[len("PROBE ") :])
    assert probe["gcs"].startswith("127.0.0.1:")
    assert probe["listening"] and all(_loopback(ip) for ip in probe["listening"]), probe
    assert probe["auth"] == "token"  # Ray turned token authentication on
    assert (tmp_path / ".ray" / "auth_token").exists()
