"""Converters of public preference data sets into the project's normalized ranking row.

A normalized ranking row is

    {"messages": [{"role": "user" | "assistant", "content": str}, ...],  # ends with a user turn
     "responses": [str, ...],                                            # K candidate replies
     "ranking": [int, ...],                                              # indices, best first
     "user_id": str | None}                                              # who wrote the prompt

Supported formats: Anthropic HH-RLHF (`{"chosen", "rejected"}` dialogues) and the OpenAssistant
OASST1 flat message table. A malformed row raises `DataError` with a one-line message naming the
source, the row and the field.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from orchestrator.data.prompts import DataError

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"
_TURN = re.compile(r"(\n\nHuman:|\n\nAssistant:)")
_ROLE_OF_MARKER = {HUMAN: "user", ASSISTANT: "assistant"}

OASST_ROLES = {"prompter": "user", "assistant": "assistant"}
OASST_REQUIRED = (
    "message_id",
    "parent_id",
    "user_id",
    "created_date",
    "text",
    "role",
    "deleted",
    "rank",
)
MAX_RESPONSES = 9  # InstructGPT shows labelers K = 4..9 responses to rank


def _error(source: str, i: int, field: str, problem: str) -> DataError:
    return DataError(f"{source}: row {i}: field '{field}': {problem}")


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


# ----------------------------------------------------------------------------------- HH-RLHF


def _hh_messages(prompt: str, source: str, i: int) -> list[dict[str, str]]:
    """Messages of an HH-RLHF prompt part (a dialogue that ends right before the final reply)."""
    parts = _TURN.split(prompt)
    if parts[0].strip():
        raise _error(source, i, "chosen", "text before the first '\\n\\nHuman:' turn")
    messages = [
        {"role": _ROLE_OF_MARKER[marker], "content": content.strip()}
        for marker, content in zip(parts[1::2], parts[2::2], strict=True)
    ]
    if not messages or messages[0]["role"] != "user" or messages[-1]["role"] != "user":
        raise _error(
            source, i, "chosen", "the dialogue must start with and reply to a 'Human:' turn"
        )
    return messages


def _hh_row(row: Any, source: str, i: int) -> dict[str, Any]:
    if not isinstance(row, Mapping):
        raise _error(source, i, "chosen", f"row is a {_type_name(row)}, not an object")
    for field in ("chosen", "rejected"):
        if row.get(field) is None:
            raise _error(source, i, field, "missing")
        if not isinstance(row[field], str):
            raise _error(source, i, field, f"expected a string, got {_type_name(row[field])}")
        if ASSISTANT not in row[field]:
            raise _error(source, i, field, "no '\\n\\nAssistant:' turn")
    chosen, rejected = row["chosen"], row["rejected"]
    shared = os.path.commonprefix([chosen, rejected])
    cut = shared.rfind(ASSISTANT)
    if cut < 0:
        raise _error(source, i, "rejected", "does not share the dialogue before the final reply")
    cut += len(ASSISTANT)
    responses = []
    for field, text in (("chosen", chosen), ("rejected", rejected)):
        reply = text[cut:]
        if HUMAN in reply or ASSISTANT in reply:
            raise _error(source, i, field, "does not share the dialogue before the final reply")
        responses.append(reply.strip())
    return {
        "messages": _hh_messages(chosen[: cut - len(ASSISTANT)], source, i),
        "responses": responses,
        "ranking": [0, 1],
        "user_id": None,
    }


def hh_rlhf_rows(rows: Iterable[Mapping[str, Any]], source: str) -> list[dict[str, Any]]:
    """Ranking rows (K = 2, chosen first) of Anthropic HH-RLHF `{"chosen", "rejected"}` rows."""
    return [_hh_row(row, source, i) for i, row in enumerate(rows)]


# ------------------------------------------------------------------------------------ OASST1


def _check_oasst_row(row: Any, source: str, i: int) -> None:
    """Raise DataError unless the row has the OASST1 columns this converter reads."""
    if not isinstance(row, Mapping):
        raise _error(source, i, "message_id", f"row is a {_type_name(row)}, not an object")
    for field in OASST_REQUIRED:
        if field not in row:
            raise _error(source, i, field, "missing (expected the OASST1 message table columns)")
    if not isinstance(row["message_id"], str) or not row["message_id"]:
        raise _error(source, i, "message_id", "expected a non-empty string")
    if row["parent_id"] is not None and not isinstance(row["parent_id"], str):
        raise _error(source, i, "parent_id", "expected a string or null")
    if row["user_id"] is not None and not isinstance(row["user_id"], str):
        raise _error(source, i, "user_id", "expected a string or null")
    if row["created_date"] is None:
        raise _error(source, i, "created_date", "missing")
    if not isinstance(row["text"], str):
        raise _error(source, i, "text", f"expected a string, got {_type_name(row['text'])}")
    if row["role"] not in OASST_ROLES:
        raise _error(source, i, "role", f"expected 'prompter' or 'assistant', got {row['role']!r}")
    if not isinstance(row["deleted"], bool):
        raise _error(source, i, "deleted", f"expected true or false, got {row['deleted']!r}")
    rank = row["rank"]
    if rank is not None and (
        isinstance(rank, bool) or not isinstance(rank, int | float) or rank != int(rank)
    ):
        raise _error(source, i, "rank", f"expected an integer or null, got {rank!r}")


def _oasst_thread(
    index: int, rows: list[Mapping[str, Any]], position: dict[str, int], source: str
) -> list[int] | None:
    """Row indices from the tree root down to rows[index]; None if a message on it is deleted."""
    thread: list[int] = []
    seen: set[int] = set()
    j: int | None = index
    while j is not None:
        if j in seen:
            raise _error(source, j, "parent_id", "the parent links form a cycle")
        seen.add(j)
        if rows[j]["deleted"]:
            return None
        thread.append(j)
        parent = rows[j]["parent_id"]
        if parent is None:
            j = None
        elif parent in position:
            j = position[parent]
        else:
            raise _error(source, j, "parent_id", f"parent message {parent!r} is not in the table")
    thread.reverse()
    for depth, j in enumerate(thread):
        expected = "prompter" if depth % 2 == 0 else "assistant"
        if rows[j]["role"] != expected:
            raise _error(
                source, j, "role", f"expected '{expected}' at depth {depth} of its message tree"
            )
    return thread


def oasst1_rows(rows: Iterable[Mapping[str, Any]], source: str) -> list[dict[str, Any]]:
    """Ranking rows of the OASST1 message table: one per prompter message with >= 2 ranked replies.

    Replies that are deleted or have rank null are ignored; of more than 9 ranked replies the 9
    best are kept. Responses are in message order (created_date, then message_id); the ranking
    lists their indices by rank, best (rank 0) first. Rows come in the input order of their
    prompter message.
    """
    table = list(rows)
    position: dict[str, int] = {}
    for i, row in enumerate(table):
        _check_oasst_row(row, source, i)
        if row["message_id"] in position:
            raise _error(
                source,
                i,
                "message_id",
                f"duplicate of row {position[row['message_id']]}: {row['message_id']!r}",
            )
        position[row["message_id"]] = i

    replies: dict[str, list[int]] = {}
    for i, row in enumerate(table):
        if (
            row["parent_id"] is not None
            and row["role"] == "assistant"
            and not row["deleted"]
            and row["rank"] is not None
        ):
            replies.setdefault(row["parent_id"], []).append(i)

    out: list[dict[str, Any]] = []
    for i, row in enumerate(table):
        ranked = replies.get(row["message_id"], [])
        if row["role"] != "prompter" or len(ranked) < 2:
            continue
        thread = _oasst_thread(i, table, position, source)
        if thread is None:
            continue
        best = sorted(ranked, key=lambda j: (int(table[j]["rank"]), j))[:MAX_RESPONSES]
        kept = sorted(best, key=lambda j: (str(table[j]["created_date"]), table[j]["message_id"]))
        ranking = sorted(range(len(kept)), key=lambda k: (int(table[kept[k]]["rank"]), k))
        out.append(
            {
                "messages": [
                    {"role": OASST_ROLES[table[j]["role"]], "content": table[j]["text"]}
                    for j in thread
                ],
                "responses": [table[j]["text"] for j in kept],
                "ranking": ranking,
                "user_id": row["user_id"],
            }
        )
    return out


# ---------------------------------------------------------------------------------- dispatch

RANKING_FORMATS: dict[str, Callable[[Iterable[Mapping[str, Any]], str], list[dict[str, Any]]]] = {
    "hh-rlhf": hh_rlhf_rows,
    "oasst1": oasst1_rows,
}


def convert_rankings(
    rows: Iterable[Mapping[str, Any]], fmt: str, source: str
) -> list[dict[str, Any]]:
    """Normalized ranking rows of `rows` in the public format `fmt` (a key of RANKING_FORMATS)."""
    convert = RANKING_FORMATS.get(fmt)
    if convert is None:
        raise DataError(
            f"{source}: unknown ranking format '{fmt}', expected one of "
            f"{', '.join(sorted(RANKING_FORMATS))}"
        )
    return convert(rows, source)
