"""Converters of public preference data sets into the project's normalized ranking row.

A normalized ranking row is

    {"messages": [{"role": "user" | "assistant", "content": str}, ...],  # ends with a user turn
     "responses": [str, ...],                                            # K candidate replies
     "ranking": [int | [int, ...], ...],            # indices best first, tied ones in a list
     "user_id": str | None}                                              # who wrote the prompt

Supported formats: Anthropic HH-RLHF (`{"chosen", "rejected"}` dialogues) and the OpenAssistant
OASST1 flat message table. Both serve as PPO prompts too (`convert_prompts`): the dialogue up to
the reply, as messages. A malformed row raises `DataError` with a one-line message naming the
source, the row (its line in a JSONL file) and the field. The converted rows keep the places of
the rows they came from, so later errors point into the source file too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from instructray.kernels import ranking_value
from instructray.orchestrator.data.schema import (
    BadRow,
    DataError,
    Rows,
    require_text,
    row_error,
    shown,
    where_of,
)

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


def _convert_each(
    rows: Iterable[Any], source: str, convert: Callable[[Any], Any]
) -> tuple[list[Any], Callable[[int], str]]:
    """[convert(row)] of every row, a BadRow made a DataError naming its place; and the places."""
    at, out = where_of(rows), []
    for i, row in enumerate(rows):
        try:
            out.append(convert(row))
        except BadRow as e:
            raise row_error(source, at(i), e.field, e.problem) from None
    return out, at


# ----------------------------------------------------------------------------------- HH-RLHF


def _hh_messages(prompt: str) -> list[dict[str, str]]:
    """Messages of an HH-RLHF prompt part (a dialogue that ends right before the final reply)."""
    parts = _TURN.split(prompt)
    if parts[0].strip():
        raise BadRow("chosen", "text before the first '\\n\\nHuman:' turn")
    messages = [
        {"role": _ROLE_OF_MARKER[marker], "content": content.strip()}
        for marker, content in zip(parts[1::2], parts[2::2], strict=True)
    ]
    if not messages or messages[0]["role"] != "user" or messages[-1]["role"] != "user":
        raise BadRow("chosen", "the dialogue must start with and reply to a 'Human:' turn")
    return messages


def _hh_row(row: Any) -> dict[str, Any]:
    if not isinstance(row, Mapping):
        raise BadRow("chosen", f"the row must be an object, got {shown(row)}")
    for field in ("chosen", "rejected"):
        require_text(row.get(field), field)
        if ASSISTANT not in row[field]:
            raise BadRow(field, f"no '\\n\\nAssistant:' turn in {shown(row[field])}")
    chosen, rejected = row["chosen"], row["rejected"]
    shared = os.path.commonprefix([chosen, rejected])
    cut = shared.rfind(ASSISTANT)
    if cut < 0:
        raise BadRow("rejected", "does not share the dialogue before the final reply")
    cut += len(ASSISTANT)
    responses = []
    for field, text in (("chosen", chosen), ("rejected", rejected)):
        reply = text[cut:]
        if HUMAN in reply or ASSISTANT in reply:
            raise BadRow(field, "does not share the dialogue before the final reply")
        responses.append(reply.strip())
    return {
        "messages": _hh_messages(chosen[: cut - len(ASSISTANT)]),
        "responses": responses,
        "ranking": [0, 1],
        "user_id": None,
    }


def hh_rlhf_rows(rows: Iterable[Mapping[str, Any]], source: str) -> list[dict[str, Any]]:
    """Ranking rows (K = 2, chosen first) of Anthropic HH-RLHF `{"chosen", "rejected"}` rows."""
    out, at = _convert_each(rows, source, _hh_row)
    return Rows(out, [at(i) for i in range(len(out))])


# ------------------------------------------------------------------------------------ OASST1


def _oasst_row(row: Any) -> Mapping[str, Any]:
    """The row, if it has the OASST1 columns this converter reads; else BadRow."""
    if not isinstance(row, Mapping):
        raise BadRow("message_id", f"the row must be an object, got {shown(row)}")
    for field in OASST_REQUIRED:
        if field not in row:
            raise BadRow(field, "missing (expected the OASST1 message table columns)")
    require_text(row["message_id"], "message_id")
    for field in ("parent_id", "user_id"):
        if row[field] is not None and not isinstance(row[field], str):
            raise BadRow(field, f"must be a string or null, got {shown(row[field])}")
    if row["created_date"] is None:
        raise BadRow("created_date", "missing")
    if not isinstance(row["text"], str):
        raise BadRow("text", f"must be a string, got {shown(row['text'])}")
    if row["role"] not in OASST_ROLES:
        raise BadRow("role", f"must be 'prompter' or 'assistant', got {shown(row['role'])}")
    if not isinstance(row["deleted"], bool):
        raise BadRow("deleted", f"must be true or false, got {shown(row['deleted'])}")
    rank = row["rank"]
    if rank is not None and (
        isinstance(rank, bool) or not isinstance(rank, int | float) or rank != int(rank)
    ):
        raise BadRow("rank", f"must be an integer or null, got {shown(rank)}")
    return row


def _oasst_thread(
    index: int,
    rows: list[Mapping[str, Any]],
    position: dict[str, int],
    error: Callable[[int, str, str], DataError],
) -> list[int] | None:
    """Row indices from the tree root down to rows[index]; None if a message on it is deleted."""
    thread: list[int] = []
    seen: set[int] = set()
    j: int | None = index
    while j is not None:
        if j in seen:
            raise error(j, "parent_id", "the parent links form a cycle")
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
            raise error(j, "parent_id", f"parent message {parent!r} is not in the table")
    thread.reverse()
    for depth, j in enumerate(thread):
        expected = "prompter" if depth % 2 == 0 else "assistant"
        if rows[j]["role"] != expected:
            raise error(j, "role", f"must be '{expected}' at depth {depth} of its message tree")
    return thread


def oasst1_rows(rows: Iterable[Mapping[str, Any]], source: str) -> list[dict[str, Any]]:
    """Ranking rows of the OASST1 message table: one per prompter message with >= 2 ranked replies.

    Replies that are deleted or have rank null are ignored; of more than 9 ranked replies the 9
    best are kept. Responses are in message order (created_date, then message_id); the ranking
    lists their indices by rank, best (rank 0) first; replies of equal rank tie. Rows come in the
    input order of their prompter message.
    """
    table, at = _convert_each(rows, source, _oasst_row)

    def error(i: int, field: str, problem: str) -> DataError:
        return row_error(source, at(i), field, problem)

    position: dict[str, int] = {}
    for i, row in enumerate(table):
        if row["message_id"] in position:
            first = position[row["message_id"]]
            raise error(i, "message_id", f"{row['message_id']!r} is also the id at {at(first)}")
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
    places: list[str] = []  # of each prompter message a converted row comes from
    for i, row in enumerate(table):
        ranked = replies.get(row["message_id"], [])
        if row["role"] != "prompter" or len(ranked) < 2:
            continue
        thread = _oasst_thread(i, table, position, error)
        if thread is None:
            continue
        best = sorted(ranked, key=lambda j: (int(table[j]["rank"]), j))[:MAX_RESPONSES]
        kept = sorted(best, key=lambda j: (str(table[j]["created_date"]), table[j]["message_id"]))
        ranks = [int(table[j]["rank"]) for j in kept]
        groups: list[list[int]] = []  # replies of one rank tie
        for k in sorted(range(len(kept)), key=lambda k: (ranks[k], k)):
            if groups and ranks[groups[-1][0]] == ranks[k]:
                groups[-1].append(k)
            else:
                groups.append([k])
        out.append(
            {
                "messages": [
                    {"role": OASST_ROLES[table[j]["role"]], "content": table[j]["text"]}
                    for j in thread
                ],
                "responses": [table[j]["text"] for j in kept],
                "ranking": ranking_value(groups),
                "user_id": row["user_id"],
            }
        )
        places.append(at(i))
    return Rows(out, places)


# ---------------------------------------------------------------------------------- dispatch

RANKING_FORMATS: dict[str, Callable[[Iterable[Mapping[str, Any]], str], list[dict[str, Any]]]] = {
    "hh-rlhf": hh_rlhf_rows,
    "oasst1": oasst1_rows,
}


def convert_rankings(
    rows: Iterable[Mapping[str, Any]], fmt: str, source: str
) -> list[dict[str, Any]]:
    """Normalized ranking rows of `rows` in the public format `fmt` (a key of RANKING_FORMATS)."""
    return _convert(rows, fmt, source, RANKING_FORMATS, "ranking")


def _convert(
    rows: Iterable[Mapping[str, Any]], fmt: str, source: str, formats: dict, what: str
) -> list[dict[str, Any]]:
    convert = formats.get(fmt)
    if convert is None:
        raise DataError(
            f"{source}: unknown {what} format '{fmt}', expected one of {', '.join(sorted(formats))}"
        )
    return convert(rows, source)


# ------------------------------------------------------------------------------- as PPO prompts


def hh_rlhf_prompts(rows: Iterable[Mapping[str, Any]], source: str) -> list[dict[str, Any]]:
    """Prompt rows of HH-RLHF rows: the dialogue before the final reply as `messages`; the two
    replies stay as the columns `chosen` and `rejected` (a reward function may read them)."""
    ranked = hh_rlhf_rows(rows, source)
    out = [
        {"messages": r["messages"], "chosen": r["responses"][0], "rejected": r["responses"][1]}
        for r in ranked
    ]
    return Rows(out, ranked.places)


def oasst1_prompts(rows: Iterable[Mapping[str, Any]], source: str) -> list[dict[str, Any]]:
    """Prompt rows of the OASST1 table: each prompter message with ranked replies, its thread
    from the root as `messages`, with its `user_id`."""
    ranked = oasst1_rows(rows, source)
    return Rows(
        [{"messages": r["messages"], "user_id": r["user_id"]} for r in ranked], ranked.places
    )


PROMPT_FORMATS = {"hh-rlhf": hh_rlhf_prompts, "oasst1": oasst1_prompts}


def convert_prompts(
    rows: Iterable[Mapping[str, Any]], fmt: str, source: str
) -> list[dict[str, Any]]:
    """Prompt rows of `rows` in the public format `fmt` (a key of PROMPT_FORMATS)."""
    return _convert(rows, fmt, source, PROMPT_FORMATS, "prompt")
