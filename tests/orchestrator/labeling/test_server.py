"""`instructray label ...` as a user runs it: a real server (uvicorn) on loopback, labelers made by
the CLI, bots ranking through HTTP; the server killed with SIGKILL under load and restarted loses
no acknowledged ranking, stores none twice and gives no task more rankings than its overlap."""

import json
import threading
import time

import httpx
import pytest
from labeling_server import Server, cli, free_port
from sqlalchemy import text

from instructray.orchestrator.labeling.store import Store


@pytest.fixture
def answers_file(tmp_path):
    def write(n, k=4):
        path = tmp_path / "answers.jsonl"
        rows = [
            {"prompt": f"Question {i}?", "responses": [f"answer {i}.{j}" for j in range(k)]}
            for i in range(n)
        ]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    return write


def test_the_cli_serves_publishes_and_exports(tmp_path, answers_file):
    db = str(tmp_path / "labels.db")
    admin = cli("add-labeler", "admin", "--db", db, "--admin").stdout.strip().splitlines()[-1]
    alice = cli("add-labeler", "alice", "--db", db).stdout.strip().splitlines()[-1]
    again = cli("add-labeler", "alice", "--db", db, check=False)
    assert again.returncode == 2 and "a labeler named 'alice' exists" in again.stderr
    assert (
        "published 3 tasks" in cli("publish", "--db", db, "--answers", str(answers_file(3))).stdout
    )
    server = Server(db, free_port(), tmp_path / "serve.log")
    server.start()
    try:
        headers = {"Authorization": f"Bearer {alice}"}
        for _ in range(3):
            task = httpx.get(server.url + "/api/tasks/next", headers=headers).json()
            ids = [a["id"] for a in task["answers"]]
            body = {"ranking": [[ids[0]], ids[1:3], [ids[3]]]}
            r = httpx.post(
                f"{server.url}/api/tasks/{task['task_id']}/ranking", headers=headers, json=body
            )
            assert r.status_code == 200, r.text
        assert httpx.get(server.url + "/api/tasks/next", headers=headers).status_code == 204
        status = httpx.get(server.url + "/api/status", headers={"Authorization": f"Bearer {admin}"})
        counts = {k: status.json()[k] for k in ("tasks", "rankings", "labelers")}
        assert counts == {"tasks": 3, "rankings": 3, "labelers": 2}
        assert status.json()["quality"]["pairs"] == 0  # one labeler: nobody to agree with
    finally:
        server.stop()
    out = tmp_path / "rankings.jsonl"
    cli("export", "--db", db, "--out", str(out))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and all(
        len(r["ranking"]) == 3 and len(r["ranking"][1]) == 2 for r in rows
    )
    assert json.loads(cli("status", "--db", db).stdout)["rankings"] == 3
    bad = cli("publish", "--db", db, "--answers", str(tmp_path / "nope.jsonl"), check=False)
    assert bad.returncode == 2 and "nope.jsonl" in bad.stderr and "Traceback" not in bad.stderr


BOTS, TASKS, OVERLAP = 24, 120, 2


class Bot(threading.Thread):
    """A labeler that ranks until no task is left; it retries through a server's restart. It
    keeps the ranking ids the server acknowledged."""

    def __init__(self, url, token, deadline):
        super().__init__(daemon=True)
        self.url, self.deadline = url, deadline
        self.client = httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=10)
        self.acked: list[tuple[int, int]] = []  # (ranking id, task id)
        self.error = None

    def call(self, method, path, **kw):
        while True:
            assert time.monotonic() < self.deadline, f"{path}: no answer before the deadline"
            try:
                return self.client.request(method, self.url + path, **kw)
            except httpx.TransportError:
                time.sleep(0.05)  # the server is down: ask again until it is back

    def run(self):
        try:
            while True:
                r = self.call("GET", "/api/tasks/next")
                if r.status_code == 204:
                    return
                assert r.status_code == 200, r.text
                task = r.json()
                ids = [a["id"] for a in task["answers"]]
                body = {"ranking": [[ids[0]], [ids[1], ids[2]], [ids[3]]], "ratings": {ids[0]: 5}}
                r = self.call("POST", f"/api/tasks/{task['task_id']}/ranking", json=body)
                if r.status_code == 200:
                    self.acked.append((r.json()["ranking_id"], task["task_id"]))
                else:  # sent before a kill, committed, unacknowledged: the retry finds it stored
                    assert r.status_code in (409, 410, 403), r.text
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e
        finally:
            self.client.close()


def test_a_server_killed_under_load_loses_no_acknowledged_ranking(db_url, tmp_path, answers_file):
    db = db_url
    store = Store(db)  # the CLI's own test adds labelers through it; here, fast
    tokens = [store.add_labeler(f"bot{i}") for i in range(BOTS)]
    rows = [json.loads(line) for line in answers_file(TASKS).read_text().splitlines()]
    store.publish(rows, overlap=OVERLAP)
    store.close()
    server = Server(db, free_port(), tmp_path / "serve.log")
    server.start()
    deadline = time.monotonic() + 600
    bots = [Bot(server.url, t, deadline) for t in tokens]
    try:
        for b in bots:
            b.start()
        while sum(len(b.acked) for b in bots) < TASKS * OVERLAP // 3:  # a third done: kill it
            assert time.monotonic() < deadline and any(b.is_alive() for b in bots)
            time.sleep(0.01)
        server.kill()
        killed_after = sum(len(b.acked) for b in bots)
        server.start()
        for b in bots:
            b.join(timeout=max(1, deadline - time.monotonic()))
        assert not [b.error for b in bots if b.error], [b.error for b in bots if b.error]
    finally:
        server.stop()
    acked = [a for b in bots for a in b.acked]
    assert killed_after < len(acked)  # rankings went on after the restart
    store = Store(db)
    with store.session() as s:
        stored = dict(s.execute(text("SELECT id, task_id FROM rankings")).all())
        pairs = [tuple(r) for r in s.execute(text("SELECT task_id, labeler_id FROM rankings"))]
        per_task = s.execute(text("SELECT task_id, COUNT(*) FROM rankings GROUP BY task_id")).all()
    store.close()
    assert all(stored.get(rid) == tid for rid, tid in acked), "an acknowledged ranking is lost"
    assert len(pairs) == len(set(pairs)), "a labeler ranked a task twice"
    assert max(n for _, n in per_task) <= OVERLAP
    assert len(stored) == TASKS * OVERLAP  # every task ranked by its overlap in the end


def test_the_bench_prints_its_figures():
    out = cli("bench", "--labelers", "4", "--tasks", "10", "--k", "3", "--overlap", "2").stdout
    figures = json.loads(out.strip().splitlines()[-1])
    assert figures["rankings"] == 20 and figures["labelers"] == 4  # every task to its overlap
    assert figures["rankings_per_s"] > 0 and 0 < figures["rank_p50_ms"] <= figures["rank_p99_ms"]
    assert out.startswith("label bench: 4 labelers, 20 rankings (10 tasks x overlap 2, K = 3)")
