"""The row schemas, one rule per field, and the one-line errors every loader gives.

Prompts, demonstrations, rankings and the public-format converters all check their rows here, so
each rule and its message live once. A message names the source, where the row is (`line 7` of a
JSONL file, else `row 7`, both counted from 1 as an editor counts), the field, what is expected
and the value seen, e.g. `p.jsonl: line 3: field 'prompt': must be a non-empty string, got int 42`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from instructray.kernels import MAX_RESPONSES, MIN_RESPONSES, tie_groups
from instructray.orchestrator.data.curation import curate

logger = logging.getLogger(__name__)

SHOWN_CHARS = 60  # a value in a message is cut to this many characters: one line, still readable


class DataError(ValueError):
    """Bad input data; the message names the source, row and field."""


class BadRow(Exception):
    """A row that breaks the schema: the field and the problem."""

    def __init__(self, field_name: str, problem: str):
        super().__init__(problem)
        self.field, self.problem = field_name, problem


class Rows(list):
    """Rows of one source, each with where it came from (`places`, e.g. 'line 7'), so that errors
    point into the file; without places row i is 'row i+1'."""

    def __init__(self, rows: Iterable[Any] = (), places: list[str] | None = None):
        super().__init__(rows)
        self.places = places

    def where(self, i: int) -> str:
        return self.places[i] if self.places is not None else f"row {i + 1}"


def where_of(rows: Iterable[Any]) -> Callable[[int], str]:
    """Where row i of `rows` came from: their own places, or 'row i+1'."""
    return rows.where if isinstance(rows, Rows) else Rows().where


def cut(value: Any) -> str:
    """repr(value), cut to SHOWN_CHARS."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def shown(value: Any) -> str:
    """A value as messages show it: its type and its repr, cut (`int 42`, `list ['a', 'b']`)."""
    return "null" if value is None else f"{type(value).__name__} {cut(value)}"


def row_error(source: str, where: str, field: str, problem: str) -> DataError:
    """The one line of a bad row: `source: line 3: field 'prompt': problem`."""
    return DataError(f"{source}: {where}: field '{field}': {problem}")


# ------------------------------------------------------------------------------------ fields


def require_text(value: Any, field: str, item: str = "") -> str:
    """`value` if it is a non-blank string; else BadRow on `field` (at `item` inside it, if any)."""
    if isinstance(value, str) and value.strip():
        return value
    at = f"{item}: " if item else ""
    if value is None:  # datasets fills columns (and struct keys) a row lacks with None
        raise BadRow(field, f"{at}missing")
    raise BadRow(field, f"{at}must be a non-empty string, got {shown(value)}")


def check_messages(messages: Any) -> list[dict[str, Any]]:
    """A non-empty list of {role, content} messages with non-empty string role and content."""
    if not isinstance(messages, list) or not messages:
        raise BadRow(
            "messages", f"must be a non-empty list of {{role, content}}, got {shown(messages)}"
        )
    for j, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise BadRow("messages", f"messages[{j}]: must be a {{role, content}}, got {shown(m)}")
        require_text(m.get("role"), "messages", f"messages[{j}]['role']")
        require_text(m.get("content"), "messages", f"messages[{j}]['content']")
    return messages


def check_prompt(row: Mapping[str, Any]) -> None:
    """The prompt part of any row: {"prompt": str} or {"messages": [...]}."""
    if row.get("messages") is not None:
        check_messages(row["messages"])
    elif row.get("prompt") is None:
        raise BadRow("prompt", "missing (expected 'prompt' or 'messages')")
    else:
        require_text(row["prompt"], "prompt")


def demonstration_response(row: Mapping[str, Any]) -> tuple[str, str]:
    """(the answer a demonstration trains on, its field): `response`, or the last message."""
    messages = row.get("messages")
    if messages is None:
        return require_text(row.get("response"), "response"), "response"
    check_messages(messages)
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        roles = [m["role"] for m in messages]
        raise BadRow(
            "messages",
            f"must end with an assistant message (the demonstration), got roles {shown(roles)}",
        )
    return messages[-1]["content"], "messages"


def check_ranking(ranking: Any, k: int) -> list[list[int]]:
    """The tie groups of K responses, best first: a permutation of 0..K-1 ([2, 0, 1]) or tie
    groups ([[2], [0, 1]]: 0 and 1 tie)."""
    if ranking is None:
        raise BadRow("ranking", "missing")
    try:
        return tie_groups(ranking, k)
    except ValueError as e:
        listed = isinstance(ranking, (list, tuple)) and ranking
        problem = f"{cut(ranking)}: {e}" if listed else f"{e}, got {shown(ranking)}"
        raise BadRow("ranking", problem) from None


def ranked_responses(row: Mapping[str, Any]) -> tuple[list[str], list[list[int]], list[str]]:
    """(responses, tie groups best first, each response's field) of a ranking row: K-wise
    {"responses", "ranking"} or a pair {"chosen", "rejected"}; the responses are distinct."""
    if row.get("responses") is None and row.get("chosen") is not None:
        fields = ["chosen", "rejected"]
        responses, ranking, items = (
            [require_text(row.get(f), f) for f in fields],
            [[0], [1]],
            fields,
        )
    else:
        responses = row.get("responses")
        if responses is None:
            raise BadRow(
                "responses", "missing (expected 'responses' + 'ranking', or 'chosen' + 'rejected')"
            )
        if not isinstance(responses, list):
            raise BadRow(
                "responses",
                f"must be a list of {MIN_RESPONSES} to {MAX_RESPONSES} strings, got "
                f"{shown(responses)}",
            )
        k = len(responses)
        if not MIN_RESPONSES <= k <= MAX_RESPONSES:
            needs = f"{MIN_RESPONSES} to {MAX_RESPONSES}"
            raise BadRow("responses", f"K = {k} responses; a ranking needs {needs}")
        items = [f"responses[{i}]" for i in range(k)]
        for text, item in zip(responses, items, strict=True):
            require_text(text, "responses", item)
        ranking, fields = check_ranking(row.get("ranking"), k), ["responses"] * k
    seen: dict[str, int] = {}
    for i, text in enumerate(responses):
        if text.strip() in seen:
            raise BadRow(fields[i], f"{items[i]} is identical to {items[seen[text.strip()]]}")
        seen[text.strip()] = i
    return responses, ranking, fields


# ------------------------------------------------------------------------------- the pass


def prompt_text(row: Any) -> str:
    """The user-visible prompt of a row (what curation compares); '' for a row of any other
    shape, which the schema check then reports."""
    if not isinstance(row, Mapping):
        return ""
    messages = row.get("messages")
    if messages and isinstance(messages, list):
        turns = [m for m in messages if isinstance(m, Mapping)]
        if turns and turns[-1].get("role") == "assistant" and len(turns) > 1:
            turns = turns[:-1]  # a demonstration's answer is not part of its prompt
        return "\n".join(str(m.get("content", "")) for m in turns)
    prompt = row.get("prompt")
    return prompt if isinstance(prompt, str) else ""


def check_rows(
    source: str,
    rows: list[dict[str, Any]],
    parse: Callable[[dict[str, Any]], Any],
    *,
    what: str,
    on_bad_row: str = "error",
    curation: dict[str, Any] | None = None,
    prepare: Callable[[Any], dict[str, Any]] | None = None,
) -> tuple[list[tuple[dict[str, Any], Any]], dict[str, int], dict[str, int]]:
    """`prepare` each row (a schema mapping; None = as it is), curate them (`curation`: keyword
    arguments of `curate`; None = not curated), then `parse` each kept row. -> ([(row,
    parsed)], bad rows skipped by field, rows curated away by filter). A bad row (prepare or
    parse raised BadRow) is a DataError naming where it is in the source (before curation
    dropped any), unless on_bad_row is 'skip'; no usable row is one too."""
    at = where_of(rows)
    numbered = list(enumerate(rows))
    curated: dict[str, int] = {}
    skipped: dict[str, int] = {}

    def bad(i: int, e: BadRow) -> None:
        if on_bad_row == "error":
            raise row_error(source, at(i), e.field, e.problem) from None
        skipped[e.field] = skipped.get(e.field, 0) + 1

    if prepare is not None:
        prepared = []
        for i, row in numbered:
            try:
                prepared.append((i, prepare(row)))
            except BadRow as e:
                bad(i, e)
        numbered = prepared
    if curation is not None:
        kept, report = curate([dict(row, _row=i) for i, row in numbered], prompt_text, **curation)
        numbered = [(row.pop("_row"), row) for row in kept]
        curated = dict(report.counts)
        if report.kept < report.total:
            logger.info("%s: %s", source, report.summary())
    parsed = []
    for i, row in numbered:
        try:
            parsed.append((row, parse(row)))
        except BadRow as e:
            bad(i, e)
    if not parsed:
        raise DataError(f"{source}: no usable {what} ({len(rows)} rows, skipped {skipped})")
    if skipped:
        logger.warning("%s: skipped bad rows by field: %s", source, skipped)
    return parsed, skipped, curated
