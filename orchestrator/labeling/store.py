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
import json
import random
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    func,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from instructray.kernels import MAX_RESPONSES, MIN_RESPONSES, ranking_value, tie_groups
from instructray.orchestrator.labeling.quality import (
    INSTRUCTGPT_AGREEMENT,
    agreement,
    consensus,
    pair_agreement,
)

# InstructGPT's labelers rated each answer 1-7 and ticked these (its Table 3), then ranked.
RATING_RANGE = (1, 7)
FLAGS = (
    "fails_to_follow_instruction",
    "inappropriate_for_customer_assistant",
    "hallucination",
    "satisfies_constraint",
    "sexual_content",
    "violent_content",
    "encourages_violence_abuse_or_self_harm",
    "denigrates_protected_class",
    "harmful_advice",
    "expresses_opinion",
    "expresses_moral_judgment",
)
ASSIGNMENT_TTL_S = 3600.0  # an assignment not ranked by then returns to the pool
TOKEN_BYTES = 32


class LabelingError(Exception):
    """A request the store refuses: an HTTP status and one line naming the field."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class _Taken(Exception):
    """The slot a server picked was taken by another one first."""


class Base(DeclarativeBase):
    pass


class Labeler(Base):
    __tablename__ = "labelers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float)


class Task(Base):
    __tablename__ = "tasks"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prompt: Mapped[str] = mapped_column(Text)  # what the labeler reads
    row: Mapped[dict] = mapped_column(JSON)  # the prompt as the RM reads it: prompt or messages
    user_id: Mapped[str | None] = mapped_column(String(200), nullable=True)  # the prompt's author
    overlap: Mapped[int] = mapped_column(Integer)
    # an admin's ranking of a gold (screening) task: positions, tie groups best first
    gold: Mapped[list | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    batch: Mapped[str] = mapped_column(String(200), default="")  # e.g. a pipeline round
    provenance: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[float] = mapped_column(Float)


class Answer(Base):
    __tablename__ = "answers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    key: Mapped[str] = mapped_column(String(16), unique=True)  # what the labeler sees: random
    position: Mapped[int] = mapped_column(Integer)  # its index in the exported responses
    text: Mapped[str] = mapped_column(Text)
    provenance: Mapped[dict] = mapped_column(JSON, default=dict)


class Assignment(Base):
    __tablename__ = "assignments"
    __table_args__ = (
        UniqueConstraint("task_id", "slot"),  # at most `overlap` live ones (gold: no slot)
        UniqueConstraint("task_id", "labeler_id"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id"), index=True)
    slot: Mapped[int | None] = mapped_column(Integer, nullable=True)
    order: Mapped[list] = mapped_column(JSON)  # answer keys in the order shown
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float, index=True)
    done: Mapped[bool] = mapped_column(Boolean, default=False)


class Ranking(Base):
    __tablename__ = "rankings"
    __table_args__ = (UniqueConstraint("task_id", "labeler_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id"), index=True)
    assignment_id: Mapped[int] = mapped_column(Integer, unique=True)
    groups: Mapped[list] = mapped_column(JSON)  # answer positions, tie groups best first
    ratings: Mapped[dict] = mapped_column(JSON, default=dict)  # position (str) -> 1..7
    flags: Mapped[dict] = mapped_column(JSON, default=dict)  # position (str) -> [flag]
    not_rankable: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float, index=True)


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


def merge_by_task(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One export row per task from rows of one ranking each: the consensus ranking, the mean of
    each answer's ratings, the union of its flags, and who ranked it."""
    by_task: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by_task.setdefault(row["task_id"], []).append(row)
    out = []
    for group in by_task.values():
        first, k = group[0], len(group[0]["responses"])
        rated = [[r["ratings"][i] for r in group if r["ratings"][i] is not None] for i in range(k)]
        merged = consensus([tie_groups(r["ranking"], k) for r in group])
        out.append(
            {
                **first,
                "ranking": ranking_value(merged),
                "labeler": ",".join(r["labeler"] for r in group),
                "ratings": [round(sum(v) / len(v), 2) if v else None for v in rated],
                "flags": [sorted({f for r in group for f in r["flags"][i]}) for i in range(k)],
                "ranking_id": max(r["ranking_id"] for r in group),
                "rankings": len(group),
                "ranked_at": max(r["ranked_at"] for r in group),
            }
        )
    return out


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


def parse_ranking(
    body: Any, positions: dict[str, int]
) -> tuple[list[list[int]], dict[str, int], dict[str, list[str]], bool]:
    """(tie groups of positions, ratings and flags by position) of a ranking's body, whose ids
    are the task's answer keys; a 400 that names the field otherwise."""
    if not isinstance(body, dict):
        raise LabelingError(400, "body: must be a JSON object")
    unknown = set(body) - {"ranking", "ratings", "flags", "not_rankable"}
    if unknown:
        raise LabelingError(400, f"{sorted(unknown)[0]}: not a field of a ranking")
    not_rankable = body.get("not_rankable", False)
    if not isinstance(not_rankable, bool):
        raise LabelingError(400, "not_rankable: must be true or false")
    groups: list[list[int]] = []
    ranking = body.get("ranking")
    if not_rankable and ranking in (None, []):
        pass
    else:
        if not isinstance(ranking, list) or not ranking:
            raise LabelingError(400, "ranking: must be a list of lists of answer ids, best first")
        seen: set[str] = set()
        for group in ranking:
            if not isinstance(group, list) or not group:
                raise LabelingError(400, "ranking: each entry must be a non-empty list of ids")
            for key in group:
                if not isinstance(key, str) or key not in positions:
                    raise LabelingError(
                        400, f"ranking: {json.dumps(key)[:40]} is no answer of this task"
                    )
                if key in seen:
                    raise LabelingError(400, f"ranking: answer {key} appears twice")
                seen.add(key)
            groups.append([positions[k] for k in group])
        missing = sorted(set(positions) - seen)
        if missing:
            raise LabelingError(400, f"ranking: answer {missing[0]} is missing; rank every answer")
    ratings = _by_answer(body.get("ratings", {}), positions, "ratings", _rating)
    flags = _by_answer(body.get("flags", {}), positions, "flags", _flags)
    return groups, ratings, flags, not_rankable


def _by_answer(value: Any, positions: dict[str, int], field: str, check: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise LabelingError(400, f"{field}: must be an object keyed by answer id")
    out = {}
    for key, v in value.items():
        if key not in positions:
            raise LabelingError(400, f"{field}: {json.dumps(key)[:40]} is no answer of this task")
        out[str(positions[key])] = check(v, f"{field}.{key}")
    return out


def _rating(v: Any, where: str) -> int:
    lo, hi = RATING_RANGE
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise LabelingError(
            400, f"{where}: must be an integer {lo} to {hi}, got {json.dumps(v)[:40]}"
        )
    return v


def _flags(v: Any, where: str) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(f, str) for f in v):
        raise LabelingError(400, f"{where}: must be a list of flag names")
    for f in v:
        if f not in FLAGS:
            raise LabelingError(
                400, f"{where}: unknown flag {f[:40]!r} (known: {', '.join(FLAGS)})"
            )
    return sorted(set(v))
