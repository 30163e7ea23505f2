"""A reward endpoint on loopback for reward.url tests: POST {prompts, responses, <columns>} ->
{"scores": [...]}, each response's count of "cat" (rule_rewards.count_target_word's rule).
It misbehaves when the first prompt asks: `fail` (HTTP 500), `slow` (answers after 1 s), `count`
(one score too many); a wrong bearer token gets HTTP 401. Every request is kept in `seen`."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
import time
from collections.abc import Iterator


class RewardServer(http.server.ThreadingHTTPServer):
    def __init__(self, token: str = ""):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.token, self.seen = token, []
        self.url = f"http://127.0.0.1:{self.server_address[1]}/score"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: RewardServer

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        auth = self.headers.get("Authorization")
        self.server.seen.append((auth, body))
        if self.server.token and auth != f"Bearer {self.server.token}":
            return self._send(401, b"a bearer token is needed")
        mode, n = body["prompts"][0], len(body["responses"])
        if mode == "fail":
            return self._send(500, b"internal error: the judge is down")
        if mode == "slow":
            time.sleep(1.0)
        scores = [float(r.count("cat")) for r in body["responses"]]
        if mode == "count":
            scores = [1.0] * (n + 1)
        return self._send(200, json.dumps({"scores": scores}).encode())

    def _send(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def reward_server(token: str = "") -> Iterator[RewardServer]:
    """A RewardServer serving in a thread; shut down and closed on exit."""
    server = RewardServer(token)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
