"""`instructray label serve` for tests: a real server (uvicorn) in a subprocess on loopback, and
the label CLI as a user runs it."""

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

INSTRUCTRAY = [sys.executable, "-m", "instructray.orchestrator.cli"]
WAIT_S = 60  # a server starts in ~2 s; a loaded 2-core machine may take longer


def cli(*args, check=True):
    out = subprocess.run(
        [*INSTRUCTRAY, "label", *args], capture_output=True, text=True, timeout=120
    )
    assert not check or out.returncode == 0, out.stderr
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`instructray label serve` in a subprocess; start() waits until it answers."""

    def __init__(self, db, port, log: Path):
        self.db, self.port, self.log, self.proc = db, port, log, None
        self.url = f"http://127.0.0.1:{port}"

    def start(self):
        self.proc = subprocess.Popen(
            [*INSTRUCTRAY, "label", "serve", "--db", self.db, "--port", str(self.port)],
            stdout=self.log.open("a"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + WAIT_S
        while True:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            try:
                if httpx.get(self.url + "/", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"no answer from {self.url} in {WAIT_S} s"
            time.sleep(0.05)  # polling a condition: the port answers

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
