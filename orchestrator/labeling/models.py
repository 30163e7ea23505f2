"""The labeling database's tables (SQLAlchemy): labelers, tasks, their answers, assignments and
rankings. The unique constraints are the service's rules under any number of servers."""

from __future__ import annotations

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


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
