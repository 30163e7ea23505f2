"""The labeling service's HTTP API over a real database (SQLite, and PostgreSQL started by the
session): who gets which task, what a ranking stores, what the export holds, and a 4xx naming the
field for every bad request."""

import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text, update

from instructray.orchestrator.labeling.app import MAX_BODY_BYTES, create_app
from instructray.orchestrator.labeling.store import Assignment, Store

ROWS = [
    {"prompt": "Name a cat.", "responses": ["Tom", "Felix", "a dog"], "user_id": "bob"},
    {"messages": [{"role": "user", "content": "Say hi."}], "responses": ["hi", "hello"]},
]


def auth(token):
    return {"Authorization": f"Bearer {token}"}


def _service(url):
    store = Store(url, gold_every=0)
    tokens = {name: store.add_labeler(name) for name in ("alice", "bob", "carol")}
    tokens["admin"] = store.add_labeler("admin", admin=True)
    client = TestClient(create_app(store))
    yield store, client, tokens
    client.close()
    store.close()


@pytest.fixture
def service(db_url):
    """The app over a fresh SQLite or PostgreSQL database, with three labelers and an admin."""
    yield from _service(db_url)


@pytest.fixture
def sqlite_service(tmp_path):
    """The same over SQLite only: for the checks of requests, which no database changes."""
    yield from _service(f"sqlite:///{tmp_path / 'labels.db'}")


def publish(client, tokens, rows=ROWS, overlap=1, **extra):
    r = client.post(
        "/api/tasks",
        headers=auth(tokens["admin"]),
        json={"rows": rows, "overlap": overlap, **extra},
    )
    assert r.status_code == 200, r.text
    return r.json()["task_ids"]


def next_task(client, token):
    r = client.get("/api/tasks/next", headers=auth(token))
    assert r.status_code in (200, 204), r.text
    return r.json() if r.status_code == 200 else None


def rank(client, token, task, ranking, **extra):
    return client.post(
        f"/api/tasks/{task['task_id']}/ranking",
        headers=auth(token),
        json={"ranking": ranking, **extra},
    )


def test_a_ranking_with_a_tie_ratings_and_flags_is_exported_in_the_rm_schema(service):
    store, client, tokens = service
    publish(client, tokens)
    task = next_task(client, tokens["alice"])
    assert task["prompt"] == "Name a cat." and len(task["answers"]) == 3
    by_text = {a["text"]: a["id"] for a in task["answers"]}
    tom, felix, dog = by_text["Tom"], by_text["Felix"], by_text["a dog"]
    r = rank(
        client,
        tokens["alice"],
        task,
        [[felix, tom], [dog]],  # Felix and Tom tie, the dog is worst
        ratings={tom: 6, felix: 6, dog: 1},
        flags={dog: ["fails_to_follow_instruction"]},
    )
    assert r.status_code == 200, r.text
    [row] = [
        json.loads(line)
        for line in client.get("/api/export", headers=auth(tokens["admin"])).text.splitlines()
    ]
    assert row["prompt"] == "Name a cat." and row["responses"] == ["Tom", "Felix", "a dog"]
    assert sorted(row["ranking"][0]) == [0, 1] and row["ranking"][1] == [2]
    assert row["ratings"] == [6, 6, 1] and row["flags"] == [[], [], ["fails_to_follow_instruction"]]
    assert row["labeler"] == "alice" and row["user_id"] == "bob"


def test_the_export_loads_as_reward_model_rankings(service, tmp_path, tok):
    from instructray.orchestrator.config import load_config
    from instructray.orchestrator.data import load_rankings

    store, client, tokens = service
    publish(client, tokens)
    for name in ("alice", "carol"):  # alice takes the first task, carol the second
        task = next_task(client, tokens[name])
        ids = [a["id"] for a in task["answers"]]
        assert rank(client, tokens[name], task, [[i] for i in ids]).status_code == 200
    path = tmp_path / "export.jsonl"
    path.write_text(client.get("/api/export", headers=auth(tokens["admin"])).text)
    cfg = load_config(None, [f"--data.rankings={path}", "--data.eval_fraction=0"])
    out = load_rankings(cfg, tok)
    assert sorted(len(e.response_ids) for e in out.train) == [2, 3]


def test_a_labeler_never_gets_their_own_prompt_and_overlap_caps_a_task(service):
    store, client, tokens = service
    publish(client, tokens, rows=ROWS[:1], overlap=2)  # bob wrote the prompt
    assert next_task(client, tokens["bob"]) is None
    first, second = next_task(client, tokens["alice"]), next_task(client, tokens["carol"])
    assert first["task_id"] == second["task_id"]
    assert next_task(client, tokens["admin"]) is None  # both slots taken
    # the same labeler asking again gets the same open assignment, not a second one
    assert next_task(client, tokens["alice"])["task_id"] == first["task_id"]


def test_an_expired_assignment_returns_to_the_pool_and_its_late_ranking_is_refused(service):
    store, client, tokens = service
    publish(client, tokens, rows=ROWS[1:])
    task = next_task(client, tokens["alice"])
    with store.session() as s:  # an hour later
        s.execute(update(Assignment).values(expires_at=0.0))
    ids = [[a["id"]] for a in task["answers"]]
    r = rank(client, tokens["alice"], task, ids)
    assert r.status_code == 410 and r.json()["error"].startswith("task_id:")
    again = next_task(client, tokens["carol"])
    assert again["task_id"] == task["task_id"]
    r = rank(client, tokens["alice"], task, ids)  # its row is gone now: not hers any more
    assert r.status_code == 403
    assert (
        rank(client, tokens["carol"], again, [[a["id"]] for a in again["answers"]]).status_code
        == 200
    )


def test_answers_are_shown_without_their_source(service):
    store, client, tokens = service
    rows = [
        {
            "prompt": f"Q{i}",
            "responses": [f"r{j}" for j in range(6)],
            "response_provenance": [{"model": f"m{j}"} for j in range(6)],
        }
        for i in range(6)
    ]
    publish(client, tokens, rows=rows, overlap=1)
    orders = []
    for _ in range(6):
        task = next_task(client, tokens["alice"])
        assert set(task) == {"task_id", "prompt", "answers", "expires_in_s"}
        assert all(set(a) == {"id", "text"} and len(a["id"]) == 12 for a in task["answers"])
        orders.append([a["text"] for a in task["answers"]])
        assert (
            rank(client, tokens["alice"], task, [[a["id"]] for a in task["answers"]]).status_code
            == 200
        )
    # shuffled: six tasks of six answers all in their published order has odds (1/720)^6
    assert any(order != [f"r{j}" for j in range(6)] for order in orders)
    rows = client.get("/api/export", headers=auth(tokens["admin"])).text.splitlines()
    assert json.loads(rows[0])["provenance"]["responses"][3] == {"model": "m3"}


def test_status_reports_agreement_and_the_export_merges_overlapping_rankings(service):
    store, client, tokens = service
    publish(client, tokens, rows=ROWS[1:], overlap=3)  # two answers: "hi", "hello"
    orders = {"alice": ["hi", "hello"], "bob": ["hi", "hello"], "carol": ["hello", "hi"]}
    for name, order in orders.items():
        task = next_task(client, tokens[name])
        ids = {a["text"]: a["id"] for a in task["answers"]}
        assert rank(client, tokens[name], task, [[ids[t]] for t in order]).status_code == 200
    status = client.get("/api/status", headers=auth(tokens["admin"])).json()
    # three labelers, one pair each: alice-bob agree, alice-carol and bob-carol do not
    assert (
        status["quality"]["agreement"] == pytest.approx(1 / 3) and status["quality"]["pairs"] == 3
    )
    assert status["quality"]["by_labeler"]["carol"]["agreement"] == 0.0
    assert status["quality"]["flagged"] == ["alice", "bob", "carol"]  # all below 0.6 with others
    export = client.get("/api/export?consensus=true", headers=auth(tokens["admin"])).text
    [row] = [json.loads(line) for line in export.splitlines()]
    assert row["ranking"] == [0, 1] and row["rankings"] == 3  # "hi" by two to one


def test_tokens_are_stored_hashed(service):
    store, client, tokens = service
    with store.session() as s:
        rows = [str(tuple(r)) for r in s.execute(text("SELECT * FROM labelers"))]
    assert len(rows) == 4 and not any(t in row for t in tokens.values() for row in rows)


def test_a_rate_limit_answers_429(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'l.db'}", rate_per_min=1, gold_every=0)
    admin, alice = store.add_labeler("admin", admin=True), store.add_labeler("alice")
    with TestClient(create_app(store)) as client:
        publish(client, {"admin": admin}, rows=ROWS[1:] * 2)
        task = next_task(client, alice)
        assert rank(client, alice, task, [[a["id"]] for a in task["answers"]]).status_code == 200
        r = client.get("/api/tasks/next", headers=auth(alice))
        assert r.status_code == 429 and r.json()["error"].startswith("rate:")
    store.close()


def test_gold_tasks_come_first_and_stay_out_of_the_export(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'l.db'}", gold_every=10)
    admin, alice = store.add_labeler("admin", admin=True), store.add_labeler("alice")
    with TestClient(create_app(store)) as client:
        publish(client, {"admin": admin}, rows=ROWS[1:])
        publish(client, {"admin": admin}, rows=[{**ROWS[0], "gold": [[1], [0], [2]]}])
        task = next_task(client, alice)
        assert task["prompt"] == "Name a cat."  # the gold task, first
        assert rank(client, alice, task, [[a["id"]] for a in task["answers"]]).status_code == 200
        assert next_task(client, alice)["prompt"] == "user: Say hi."
        assert client.get("/api/export", headers=auth(admin)).text == ""
        assert len(client.get("/api/export?gold=true", headers=auth(admin)).text.splitlines()) == 1
    store.close()


# ------------------------------------------------------------------------------ bad requests

A, B, C = "A", "B", "C"  # stand for the assigned task's answer ids, in the order shown


def _bad_rankings():
    ok = {"ranking": [[A], [B, C]]}
    return [
        ({"ranking": [[A], [B]]}, 400, "ranking: answer"),  # C missing
        ({"ranking": [[A], [B], [C], ["zzz"]]}, 400, 'ranking: "zzz" is no answer'),
        ({"ranking": [[A], [A, B], [C]]}, 400, "appears twice"),
        ({"ranking": [A, B, C]}, 400, "ranking: each entry must be a non-empty list"),
        ({"ranking": [[A], [], [B, C]]}, 400, "ranking: each entry"),
        ({"ranking": "A>B>C"}, 400, "ranking: must be a list"),
        ({"ranking": []}, 400, "ranking: must be a list"),
        ({**ok, "ratings": {A: 0}}, 400, "ratings.A: must be an integer 1 to 7"),
        ({**ok, "ratings": {A: 8}}, 400, "ratings.A: must be an integer 1 to 7"),
        ({**ok, "ratings": {A: "5"}}, 400, "ratings.A"),
        ({**ok, "ratings": {A: True}}, 400, "ratings.A"),
        ({**ok, "ratings": {A: 4.5}}, 400, "ratings.A"),
        ({**ok, "ratings": {"nope": 3}}, 400, 'ratings: "nope" is no answer'),
        ({**ok, "ratings": [3, 4, 5]}, 400, "ratings: must be an object"),
        ({**ok, "flags": {A: ["rude"]}}, 400, "flags.A: unknown flag 'rude'"),
        ({**ok, "flags": {A: "hallucination"}}, 400, "flags.A: must be a list"),
        ({**ok, "flags": {"nope": []}}, 400, 'flags: "nope" is no answer'),
        ({**ok, "not_rankable": "yes"}, 400, "not_rankable: must be true or false"),
        ({**ok, "comment": "nice"}, 400, "comment: not a field of a ranking"),
        (["A", "B"], 400, "body: must be a JSON object"),
    ]


@pytest.mark.parametrize(("body", "status", "message"), _bad_rankings())
def test_a_bad_ranking_is_a_4xx_naming_the_field_and_stores_nothing(
    sqlite_service, body, status, message
):
    store, client, tokens = sqlite_service
    publish(client, tokens, rows=ROWS[:1])
    task = next_task(client, tokens["alice"])
    ids = {k: a["id"] for k, a in zip((A, B, C), task["answers"], strict=True)}
    text = json.dumps(body)
    for k, v in ids.items():
        text = text.replace(f'"{k}"', json.dumps(v))
    message = message.replace(".A", f".{ids[A]}")
    r = client.post(
        f"/api/tasks/{task['task_id']}/ranking",
        headers={**auth(tokens["alice"]), "Content-Type": "application/json"},
        content=text,
    )
    assert r.status_code == status and message in r.json()["error"], r.text
    assert store.counts()["rankings"] == 0


def _bad_requests():
    """(method, path, token name or a literal header, body, status, what the error names)."""
    cat = ROWS[0]
    return [
        ("GET", "/api/tasks/next", None, None, 401, "Authorization: missing"),
        ("GET", "/api/tasks/next", "Bearer not-a-token", None, 401, "Authorization: the token"),
        ("GET", "/api/tasks/next", "Basic YWxpY2U6cHc=", None, 401, "Authorization: missing"),
        ("GET", "/api/export", "alice", None, 403, "admin"),
        ("GET", "/api/status", "alice", None, 403, "admin"),
        ("POST", "/api/tasks", "alice", {"rows": [cat]}, 403, "admin"),
        ("POST", "/api/tasks/999/ranking", "alice", {"ranking": []}, 404, "task_id: no task 999"),
        ("POST", "/api/tasks/abc/ranking", "alice", {}, 400, "task_id"),
        ("POST", "/api/tasks/1/ranking", "carol", {"ranking": []}, 403, "not assigned to you"),
        ("POST", "/api/tasks/1/ranking", "alice", b"{not json", 400, "body: not JSON"),
        ("POST", "/api/tasks/1/ranking", "alice", b"x" * (MAX_BODY_BYTES + 1), 413, "body"),
        ("POST", "/api/tasks", "admin", {"rows": "x"}, 400, "rows: must be a list"),
        (
            "POST",
            "/api/tasks",
            "admin",
            {"rows": [cat], "overlap": 0},
            400,
            "overlap: must be >= 1",
        ),
        ("POST", "/api/tasks", "admin", {"rows": [cat], "overlap": "2"}, 400, "overlap"),
        (
            "POST",
            "/api/tasks",
            "admin",
            {"rows": [{"responses": ["a", "b"]}]},
            400,
            "field 'prompt'",
        ),
        (
            "POST",
            "/api/tasks",
            "admin",
            {"rows": [{**cat, "responses": ["a"]}]},
            400,
            "field 'responses'",
        ),
        (
            "POST",
            "/api/tasks",
            "admin",
            {"rows": [{**cat, "responses": ["a", 3]}]},
            400,
            "field 'responses'",
        ),
        (
            "POST",
            "/api/tasks",
            "admin",
            {"rows": [{**cat, "gold": [0, 0, 1]}]},
            400,
            "field 'gold'",
        ),
        (
            "POST",
            "/api/tasks",
            "admin",
            {"rows": [cat], "batch": 7},
            400,
            "batch: must be a string",
        ),
        ("GET", "/api/nowhere", "alice", None, 404, "Not Found"),
        ("POST", "/api/tasks/next", "alice", {}, 405, "Method Not Allowed"),
    ]


@pytest.mark.parametrize(("method", "path", "who", "body", "status", "message"), _bad_requests())
def test_a_bad_request_is_a_4xx_naming_the_field(
    sqlite_service, method, path, who, body, status, message
):
    store, client, tokens = sqlite_service
    publish(client, tokens, rows=ROWS[:1])  # task 1, bob's prompt
    next_task(client, tokens["alice"])  # assigned to alice
    headers = {}
    if who in tokens:
        headers = auth(tokens[who])
    elif who:
        headers = {"Authorization": who}
    kwargs = (
        {"content": body} if isinstance(body, bytes) else {"json": body} if body is not None else {}
    )
    r = client.request(method, path, headers=headers, **kwargs)
    assert r.status_code == status and message in r.json()["error"], r.text
    assert store.counts() == {"tasks": 1, "rankings": 0, "labelers": 4}
