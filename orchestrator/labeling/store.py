"""The labeling service's store: labelers, tasks (a prompt and K answers with where each came
from), assignments and rankings, in a database through SQLAlchemy: SQLite (a file in the run
folder) by default, PostgreSQL by URL.

Every change is one transaction, committed before the caller answers anyone: an acknowledged
ranking is on disk. The database's own constraints keep the rules under any number of concurrent
servers: a task holds at most `overlap` live assignments (one row per slot, unique per task), a
labeler ranks a task once (unique per task and labeler), an assignment is ranked once.
"""

from __future__ import annotations

import hashlib
import random
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    create_engine,
    delete,
    event,
    func,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from instructray.kernels import MAX_RESPONSES, MIN_RESPONSES, ranking_value, tie_groups
from instructray.orchestrator.labeling.models import (
    Answer,
    Assignment,
    Base,
    Labeler,
    Ranking,
    Task,
)
from instructray.orchestrator.labeling.quality import (
    INSTRUCTGPT_AGREEMENT,
    agreement,
    merge_by_task,
    pair_agreement,
)
from instructray.orchestrator.labeling.requests import (
    LabelingError,
    parse_ranking,
)

ASSIGNMENT_TTL_S = 3600.0  # an assignment not ranked by then returns to the pool
TOKEN_BYTES = 32


class _Taken(Exception):
    """The slot a server picked was taken by another one first."""


def hash_token(token: str) -> str:
    """What the store keeps of a token (tokens are random 32 bytes: a plain hash is enough)."""
    return hashlib.sha256(token.encode()).hexdigest()


def db_url(value: str) -> str:
    """An SQLAlchemy URL as given, or a path made an SQLite URL (its folder made)."""
    if "://" in value:
        return value
    path = Path(value).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


@dataclass
class Shown:
    """One assignment as the labeler sees it: no source, answers in a shuffled order."""

    task_id: int
    prompt: str
    answers: list[dict[str, str]]
    expires_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "prompt": self.prompt,
            "answers": self.answers,
            "expires_in_s": max(0, round(self.expires_at - time.time())),
        }


class Store:
    """The database of one labeling service. `url`: an SQLAlchemy URL (sqlite:///path.db,
    postgresql+psycopg://user@host/db)."""

    def __init__(
        self,
        url: str,
        *,
        ttl_s: float = ASSIGNMENT_TTL_S,
        rate_per_min: int = 0,
        gold_every: int = 10,
    ):
        self.url = url
        self.ttl_s, self.rate_per_min, self.gold_every = ttl_s, rate_per_min, gold_every
        sqlite = url.startswith("sqlite")
        self.engine = create_engine(
            url,
            pool_pre_ping=True,
            connect_args={"timeout": 30, "check_same_thread": False} if sqlite else {},
        )
        if sqlite:  # many writers in one file: each transaction takes the lock when it begins
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "begin", _sqlite_begin)
        Base.metadata.create_all(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
            yield s

    def close(self) -> None:
        self.engine.dispose()

    # ---------------------------------------------------------------- labelers

    def add_labeler(self, name: str, admin: bool = False) -> str:
        """A new labeler (or admin); -> its token, which is stored only as a hash."""
        name = name.strip()
        if not name or len(name) > 200:
            raise LabelingError(400, "name: must be 1 to 200 characters")
        token = secrets.token_urlsafe(TOKEN_BYTES)
        try:
            with self.session() as s:
                s.add(
                    Labeler(
                        name=name, token_hash=hash_token(token), admin=admin, created_at=time.time()
                    )
                )
        except IntegrityError:
            raise LabelingError(409, f"name: a labeler named {name!r} exists") from None
        return token

    def labeler(self, token: str | None) -> Labeler:
        """The labeler a bearer token belongs to, or 401."""
        if not token:
            raise LabelingError(401, "Authorization: missing 'Bearer <token>'")
        with self.session() as s:
            found = s.scalar(select(Labeler).where(Labeler.token_hash == hash_token(token)))
        if found is None:
            raise LabelingError(401, "Authorization: the token is not a labeler's")
        return found

    # ---------------------------------------------------------------- tasks

    def publish(self, rows: list[dict[str, Any]], overlap: int = 1, batch: str = "") -> list[int]:
        """Tasks from rows {"prompt" or "messages", "responses": [K texts], optional "user_id",
        "provenance" (the task's) and "response_provenance" (one per response); a gold task also
        has "gold": its ranking (indices, tie groups best first). -> the task ids."""
        if overlap < 1:
            raise LabelingError(400, f"overlap: must be >= 1, got {overlap}")
        now, ids = time.time(), []
        with self.session() as s:
            for i, row in enumerate(rows):
                task, answers = _task_of(row, i, overlap, batch, now)
                s.add(task)
                s.flush()
                for a in answers:
                    a.task_id = task.id
                s.add_all(answers)
                ids.append(task.id)
        return ids

    def next_task(self, labeler: Labeler) -> Shown | None:
        """The labeler's open assignment, or a new one: the oldest task with a free slot that the
        labeler has not ranked and whose prompt is not theirs, a gold task now and then. None when
        there is none."""
        for _ in range(8):  # another server may take the same free slot first: try the next
            try:
                with self.session() as s:
                    return self._next_task(s, labeler)
            except (IntegrityError, _Taken):
                continue
        raise LabelingError(503, "tasks: too many labelers asked at once; ask again")

    def _next_task(self, s: Session, labeler: Labeler) -> Shown | None:
        now = time.time()
        open_one = s.scalar(
            select(Assignment).where(
                Assignment.labeler_id == labeler.id,
                Assignment.done.is_(False),
                Assignment.expires_at > now,
            )
        )
        if open_one is not None:
            return self._shown(s, open_one)
        if self.rate_per_min:
            recent = s.scalar(
                select(func.count(Ranking.id)).where(
                    Ranking.labeler_id == labeler.id, Ranking.created_at > now - 60
                )
            )
            if recent >= self.rate_per_min:
                raise LabelingError(
                    429,
                    f"rate: {recent} rankings in the last minute; the limit is {self.rate_per_min}",
                )
        # expired assignments go back to the pool (their rows go; a late ranking gets 403)
        s.execute(
            delete(Assignment).where(Assignment.done.is_(False), Assignment.expires_at <= now)
        )
        mine = select(Assignment.task_id).where(Assignment.labeler_id == labeler.id)
        task = None
        if self.gold_every:
            done = s.scalar(
                select(func.count(Assignment.id)).where(Assignment.labeler_id == labeler.id)
            )
            if done % self.gold_every == 0:  # the 1st, the (gold_every+1)th, ...
                task = s.scalar(
                    select(Task)
                    .where(Task.gold.is_not(None), Task.id.not_in(mine))
                    .order_by(Task.id)
                    .limit(1)
                )
        if task is None:
            taken = (
                select(func.count(Assignment.id))
                .where(Assignment.task_id == Task.id, Assignment.slot.is_not(None))
                .scalar_subquery()
            )
            task = s.scalar(
                select(Task)
                .where(
                    Task.gold.is_(None),
                    Task.id.not_in(mine),
                    (Task.user_id.is_(None)) | (Task.user_id != labeler.name),
                    taken < Task.overlap,
                )
                .order_by(Task.id)
                .limit(1)
                # PostgreSQL: a task another server is assigning now is skipped, not waited for
                # (SQLite takes the whole database at BEGIN IMMEDIATE instead)
                .with_for_update(skip_locked=True, of=Task)
            )
        if task is None:
            return None
        slot = None
        if task.gold is None:
            used = set(
                s.scalars(
                    select(Assignment.slot).where(
                        Assignment.task_id == task.id, Assignment.slot.is_not(None)
                    )
                )
            )
            free = set(range(task.overlap)) - used
            if not free:  # taken by another server since the task was picked: pick again
                raise _Taken
            slot = min(free)
        keys = list(s.scalars(select(Answer.key).where(Answer.task_id == task.id)))
        random.SystemRandom().shuffle(keys)
        assignment = Assignment(
            task_id=task.id,
            labeler_id=labeler.id,
            slot=slot,
            order=keys,
            created_at=now,
            expires_at=now + self.ttl_s,
        )
        s.add(assignment)
        s.flush()  # a slot another server took first fails here: IntegrityError, try again
        return self._shown(s, assignment)

    def _shown(self, s: Session, a: Assignment) -> Shown:
        task = s.get(Task, a.task_id)
        texts = dict(
            s.execute(select(Answer.key, Answer.text).where(Answer.task_id == task.id)).all()
        )
        answers = [{"id": k, "text": texts[k]} for k in a.order]
        return Shown(task.id, task.prompt, answers, a.expires_at)

    # ---------------------------------------------------------------- rankings

    def submit(self, labeler: Labeler, task_id: int, body: Any) -> int:
        """Record a labeler's ranking of their assignment of task_id; -> the ranking's id. The
        body: {"ranking": [[ids best], [tied ids], ...], "ratings": {id: 1..7}, "flags": {id:
        [names]}, "not_rankable": false}. Committed before it returns."""
        with self.session() as s:
            a = s.scalar(
                select(Assignment).where(
                    Assignment.task_id == task_id, Assignment.labeler_id == labeler.id
                )
            )
            if a is None:
                if s.scalar(
                    select(Ranking.id).where(
                        Ranking.task_id == task_id, Ranking.labeler_id == labeler.id
                    )
                ):
                    raise LabelingError(409, f"task_id: you ranked task {task_id} already")
                if s.get(Task, task_id) is None:
                    raise LabelingError(404, f"task_id: no task {task_id}")
                raise LabelingError(
                    403,
                    f"task_id: task {task_id} is not assigned to you (or expired and went "
                    "back to the pool)",
                )
            if a.done:
                raise LabelingError(409, f"task_id: you ranked task {task_id} already")
            if a.expires_at <= time.time():
                raise LabelingError(
                    410, f"task_id: your assignment of task {task_id} expired; ask for the next"
                )
            positions = dict(
                s.execute(
                    select(Answer.key, Answer.position).where(Answer.task_id == task_id)
                ).all()
            )
            groups, ratings, flags, not_rankable = parse_ranking(body, positions)
            ranking = Ranking(
                task_id=task_id,
                labeler_id=labeler.id,
                assignment_id=a.id,
                groups=groups,
                ratings=ratings,
                flags=flags,
                not_rankable=not_rankable,
                created_at=time.time(),
            )
            s.add(ranking)
            a.done = True
            try:
                s.flush()
            except IntegrityError:  # the same ranking sent twice at once: the first one counts
                raise LabelingError(409, f"task_id: you ranked task {task_id} already") from None
            return ranking.id

    # ---------------------------------------------------------------- reading

    def export(
        self,
        *,
        since_id: int = 0,
        gold: bool = False,
        consensus: bool = False,
        batch: str | None = None,
    ) -> list[dict[str, Any]]:
        """Every ranking after `since_id` (not the not-rankable ones; gold tasks' only with
        gold=True) as a row in the reward model's rankings schema, with who ranked it, the
        ratings and flags (one per response) and where each response came from. consensus:
        one row per task instead, its rankings merged by ranked pairs (quality.consensus).
        batch: that batch's tasks only."""
        query = (
            select(Ranking, Task, Labeler.name)
            .join(Task, Task.id == Ranking.task_id)
            .join(Labeler, Labeler.id == Ranking.labeler_id)
            .where(Ranking.id > since_id, Ranking.not_rankable.is_(False))
            .order_by(Ranking.id)
        )
        if batch is not None:
            query = query.where(Task.batch == batch)
        with self.session() as s:
            rows = s.execute(query).all()
            answers: dict[int, list[Answer]] = {}
            for a in s.scalars(
                select(Answer)
                .where(Answer.task_id.in_({t.id for _, t, _ in rows}))
                .order_by(Answer.position)
            ):
                answers.setdefault(a.task_id, []).append(a)
        out = []
        for r, task, name in rows:
            if task.gold is not None and not gold:
                continue
            texts = answers[task.id]
            out.append(
                {
                    **task.row,
                    "responses": [a.text for a in texts],
                    "ranking": ranking_value(r.groups),
                    "user_id": task.user_id,
                    "labeler": name,
                    "ratings": [r.ratings.get(str(a.position)) for a in texts],
                    "flags": [r.flags.get(str(a.position), []) for a in texts],
                    "task_id": task.id,
                    "ranking_id": r.id,
                    "batch": task.batch,
                    "provenance": {
                        **task.provenance,
                        "responses": [a.provenance for a in texts],
                    },
                    "ranked_at": r.created_at,
                }
            )
        return merge_by_task(out) if consensus else out

    def status(self, batch: str | None = None) -> dict[str, Any]:
        """counts() and quality() in one object."""
        return {**self.counts(batch), "quality": self.quality(batch)}

    def quality(
        self, batch: str | None = None, min_agreement: float = 0.6, min_gold: float = 0.75
    ) -> dict[str, Any]:
        """Agreement between labelers on tasks two or more ranked (InstructGPT's pairwise
        measure), each labeler's agreement with the gold tasks' rankings, and the labelers below
        `min_agreement` with the others or `min_gold` with gold (InstructGPT screened at 75%)."""
        with self.session() as s:
            query = (
                select(Ranking.task_id, Labeler.name, Ranking.groups, Task.gold)
                .join(Task, Task.id == Ranking.task_id)
                .join(Labeler, Labeler.id == Ranking.labeler_id)
                .where(Ranking.not_rankable.is_(False))
            )
            if batch is not None:
                query = query.where(Task.batch == batch)
            rows = s.execute(query).all()
        peers = agreement((t, name, g) for t, name, g, gold in rows if gold is None)
        per_gold: dict[str, list[int]] = {}
        for _, name, groups, gold in rows:
            if gold is not None:
                agree, pairs = pair_agreement(groups, gold)
                counts = per_gold.setdefault(name, [0, 0])
                counts[0] += agree
                counts[1] += pairs
        gold_by = {name: {"agreement": a / n, "pairs": n} for name, (a, n) in per_gold.items() if n}
        flagged = {n for n, v in gold_by.items() if v["agreement"] < min_gold} | {
            n
            for n, v in peers["by_labeler"].items()
            if v["agreement"] is not None and v["agreement"] < min_agreement
        }
        return {
            **peers,
            "instructgpt_agreement": INSTRUCTGPT_AGREEMENT,
            "gold": dict(sorted(gold_by.items())),
            "flagged": sorted(flagged),
        }

    def counts(self, batch: str | None = None) -> dict[str, int]:
        """Tasks, rankings (rankable, not gold) and labelers, of one batch or of all."""
        with self.session() as s:
            tasks = select(func.count(Task.id)).where(Task.gold.is_(None))
            ranked = (
                select(func.count(Ranking.id))
                .join(Task, Task.id == Ranking.task_id)
                .where(Task.gold.is_(None), Ranking.not_rankable.is_(False))
            )
            if batch is not None:
                tasks, ranked = tasks.where(Task.batch == batch), ranked.where(Task.batch == batch)
            return {
                "tasks": s.scalar(tasks),
                "rankings": s.scalar(ranked),
                "labelers": s.scalar(select(func.count(Labeler.id))),
            }


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    # Transactions begin in _sqlite_begin, not where the driver would (at the first write, when
    # another writer may have committed since this one read: SQLite's "database is locked").
    connection.isolation_level = None
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _task_of(row: Any, i: int, overlap: int, batch: str, now: float) -> tuple[Task, list[Answer]]:
    """A task and its answers from a published row; a bad row is a 400 naming it."""

    def bad(field: str, problem: str) -> LabelingError:
        return LabelingError(400, f"row {i + 1}: field '{field}': {problem}")

    if not isinstance(row, dict):
        raise bad("prompt", "the row must be an object")
    if isinstance(row.get("messages"), list) and row["messages"]:
        prompt_row = {"messages": row["messages"]}
        prompt = "\n\n".join(f"{m.get('role')}: {m.get('content')}" for m in row["messages"])
    elif isinstance(row.get("prompt"), str) and row["prompt"].strip():
        prompt_row, prompt = {"prompt": row["prompt"]}, row["prompt"]
    else:
        raise bad("prompt", "missing (expected 'prompt' or 'messages')")
    responses = row.get("responses")
    if not isinstance(responses, list) or not MIN_RESPONSES <= len(responses) <= MAX_RESPONSES:
        raise bad("responses", f"must be a list of {MIN_RESPONSES} to {MAX_RESPONSES} strings")
    if not all(isinstance(r, str) and r.strip() for r in responses):
        raise bad("responses", "every response must be a non-empty string")
    origins = row.get("response_provenance") or [{} for _ in responses]
    if not isinstance(origins, list) or len(origins) != len(responses):
        raise bad("response_provenance", "must hold one object per response")
    gold = row.get("gold")
    if gold is not None:
        try:
            gold = tie_groups(gold, len(responses))
        except ValueError as e:
            raise bad("gold", str(e)) from None
    user = row.get("user_id")
    task = Task(
        prompt=prompt,
        row=prompt_row,
        user_id=None if user is None else str(user),
        overlap=overlap,
        gold=gold,
        batch=batch,
        provenance=dict(row.get("provenance") or {}),
        created_at=now,
    )
    answers = [
        Answer(key=secrets.token_hex(6), position=k, text=text, provenance=dict(origin or {}))
        for k, (text, origin) in enumerate(zip(responses, origins, strict=True))
    ]
    return task, answers
