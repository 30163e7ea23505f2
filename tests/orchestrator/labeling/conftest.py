"""Databases for the labeling tests: an SQLite file, or a database on a PostgreSQL server that the
session starts on loopback from the OS packages (initdb, pg_ctl; run as the `postgres` user when
the tests run as root, as PostgreSQL refuses root) and stops at its end."""

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

PG_START_S = 60


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None
    )
    if not found:
        raise RuntimeError(
            f"PostgreSQL's {name} is not installed: apt-get install postgresql (.ci/run does)"
        )
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server():
    """(host, port) of a PostgreSQL server of this session, trusting local connections."""
    as_root = os.geteuid() == 0
    user = "postgres" if as_root else None
    home = Path(tempfile.mkdtemp(prefix="instructray-pg-"))
    data, sockets = home / "data", home / "sockets"
    sockets.mkdir()
    if as_root:
        pw = pwd.getpwnam("postgres")
        for path in (home, sockets):
            os.chown(path, pw.pw_uid, pw.pw_gid)
    run = {"user": user, "capture_output": True, "text": True, "timeout": PG_START_S}
    out = subprocess.run(
        [_pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"], **run
    )
    assert out.returncode == 0, out.stderr
    port = _free_port()
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=on"
    log = home / "server.log"
    start = subprocess.run(
        [_pg_bin("pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w", "start"], **run
    )
    assert start.returncode == 0, start.stderr + (log.read_text() if log.exists() else "")
    try:
        yield "127.0.0.1", port
    finally:
        subprocess.run([_pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], **run)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A fresh, empty database: an SQLite file, or a new database on the session's server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'labels.db'}"
    import psycopg

    host, port = request.getfixturevalue("postgres_server")
    name = f"labels_{secrets.token_hex(4)}"
    with psycopg.connect(
        host=host, port=port, user="postgres", dbname="postgres", autocommit=True
    ) as c:
        c.execute(f"CREATE DATABASE {name}")
    return f"postgresql+psycopg://postgres@{host}:{port}/{name}"
