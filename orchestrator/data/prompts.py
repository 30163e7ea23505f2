"""Prompt sets: formatting, loading (rows from sources.py, mapped from other schemas, checked by
schema.py), batching. Each prompt keeps the other columns of its row, which travel with its
samples to the reward functions (`PromptSet.columns`).

Bad rows get a one-line error naming the file, the row and the field, or are skipped and counted
when `data.on_bad_row: skip`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from instructray.orchestrator.config.functions import ARGUMENTS, RAW_PROMPTS
from instructray.orchestrator.data.converters import convert_prompts
from instructray.orchestrator.data.schema import (
    BadRow,
    DataError,
    check_prompt,
    check_rows,
    shown,
)
from instructray.orchestrator.data.sources import TINY_PROMPTS, load_rows


def format_prompt(row: dict[str, Any], tokenizer: Any, template: str) -> str:
    """Prompt text for a {"prompt"} or {"messages"} row, through the chat template if any."""
    if "messages" in row and row["messages"] is not None:
        messages = row["messages"]
        if messages and messages[-1].get("role") == "assistant":
            messages = messages[:-1]  # a demonstration row: its prompt is what precedes the answer
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": row["prompt"]}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return template.format(prompt=row["prompt"])


def tokenize_prompt(row: dict[str, Any], tokenizer: Any, template: str) -> list[int]:
    """The token ids of a row's formatted prompt (format_prompt), no special tokens added."""
    return tokenizer(format_prompt(row, tokenizer, template), add_special_tokens=False)["input_ids"]


@dataclass
class PromptSet:
    """Tokenized prompts of one source, with the counts of what was skipped."""

    texts: list[str]
    token_ids: list[list[int]]
    skipped: dict[str, int] = field(default_factory=dict)  # bad rows skipped, by field
    curation: dict[str, int] = field(default_factory=dict)  # rows dropped, by filter
    columns: list[dict[str, Any]] = field(default_factory=list)  # each prompt's, for rewards

    def column_names(self) -> list[str]:
        """The columns a reward function may take, in the rows' order."""
        return list(dict.fromkeys(name for row in self.columns for name in row))

    def __len__(self) -> int:
        return len(self.texts)

    def metrics(self) -> dict[str, int]:
        """Flat counts for metrics.jsonl (as ExampleSet.metrics)."""
        out = {"data/prompts": len(self)}
        out.update({f"data/skipped/{k}": v for k, v in self.skipped.items()})
        out.update({f"data/curation/{k}": v for k, v in self.curation.items()})
        return out


def prompt_row(
    row: Any, prompt_field: str = "prompt", mapper: Callable[[Any], Any] | None = None
) -> dict[str, Any]:
    """A data row in the prompt schema: first `mapper(row)` (data.prompt_map), then the column
    `prompt_field` (data.prompt_field) as its `prompt` (text) or `messages` (a list); BadRow
    naming the field when it is missing."""
    if mapper is not None:
        try:
            row = mapper(dict(row) if isinstance(row, Mapping) else row)
        except Exception as e:
            raise BadRow("data.prompt_map", f"raised {type(e).__name__}: {e}") from None
        if not isinstance(row, Mapping):
            raise BadRow("data.prompt_map", f"returned {shown(row)}, expected a row (a dict)")
    if prompt_field == "prompt" or not isinstance(row, Mapping):
        return row
    value = row.get(prompt_field)
    if value is None:
        has = ", ".join(sorted(str(k) for k, v in row.items() if v is not None)) or "none"
        raise BadRow(
            prompt_field, f"missing (data.prompt_field = {prompt_field!r}; the row has: {has})"
        )
    out = {k: v for k, v in row.items() if k != prompt_field}
    out["messages" if isinstance(value, list) else "prompt"] = value
    return out


def prompt_columns(row: Mapping[str, Any]) -> dict[str, Any]:
    """What of a prompt row reaches the reward functions: every column but the prompt text, and
    the prompt as the row wrote it (raw_prompts: its text, or its messages)."""
    columns = {k: v for k, v in row.items() if k != "prompt" and k not in ARGUMENTS}
    messages = row.get("messages")
    columns[RAW_PROMPTS] = messages if messages is not None else row.get("prompt")
    return columns


def row_problem(row: dict[str, Any]) -> tuple[str, str] | None:
    """(field, problem) if the row does not follow the prompt schema."""
    try:
        check_prompt(row)
    except BadRow as e:
        return e.field, e.problem
    return None


def checked_prompt(
    row: dict[str, Any], tokenizer: Any, template: str, max_prompt_tokens: int
) -> tuple[str, list[int]]:
    """(formatted prompt, its token ids) of a row; BadRow if it breaks the schema or is longer
    than `max_prompt_tokens`."""
    check_prompt(row)
    text = format_prompt(row, tokenizer, template)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) > max_prompt_tokens:
        raise BadRow(
            "prompt", f"{len(ids)} tokens, longer than data.max_prompt_tokens = {max_prompt_tokens}"
        )
    return text, ids


def load_prompts(
    spec: str,
    tokenizer: Any,
    *,
    max_prompt_tokens: int,
    template: str = "{prompt}\n",
    split: str = "train",
    on_bad_row: str = "error",
    curation: dict[str, Any] | None = None,
    prompt_field: str = "prompt",
    fmt: str = "auto",
    mapper: Callable[[Any], Any] | None = None,
) -> PromptSet:
    """Load, convert from a public format (`fmt`: a key of converters.PROMPT_FORMATS, or auto),
    map to the prompt schema (prompt_row), curate (`curation`: keyword arguments of
    data.curation.curate), validate, format and tokenize a prompt set; raise DataError on bad
    input."""
    if not spec:
        raise DataError(
            f"data.prompts is empty: give a prompt file, a Hub data set or {TINY_PROMPTS}"
        )
    rows = load_rows(spec, split, key="data.prompts")
    if fmt != "auto":
        rows = convert_prompts(rows, fmt, spec)
    checked, skipped, curated = check_rows(
        spec,
        rows,
        lambda row: checked_prompt(row, tokenizer, template, max_prompt_tokens),
        what="prompts",
        on_bad_row=on_bad_row,
        curation=curation,
        prepare=lambda row: prompt_row(row, prompt_field, mapper),
    )
    texts = [text for _, (text, _) in checked]
    columns = [prompt_columns(row) for row, _ in checked]
    return PromptSet(texts, [ids for _, (_, ids) in checked], skipped, curated, columns)


class PromptSampler:
    """Endless seeded batches of prompt indices, reshuffled each epoch; resumable by position."""

    def __init__(self, size: int, batch_size: int, seed: int, shuffle: bool = True):
        self.size, self.batch_size, self.seed, self.shuffle = size, batch_size, seed, shuffle
        self.epoch, self.offset = 0, 0

    def _order(self, epoch: int) -> list[int]:
        order = list(range(self.size))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def next_batch(self) -> list[int]:
        """The next batch_size indices, crossing epoch boundaries as needed."""
        out: list[int] = []
        while len(out) < self.batch_size:
            order = self._order(self.epoch)
            take = order[self.offset : self.offset + self.batch_size - len(out)]
            out += take
            self.offset += len(take)
            if self.offset >= self.size:
                self.epoch, self.offset = self.epoch + 1, 0
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.offset = state["epoch"], state["offset"]
