"""Training examples of the supervised stages: demonstrations (SFT) and rankings (reward model).

Rows come through `load_rows` (local files or the Hub), are converted from a public format when
`data.rankings_format` says so, curated (curation.py), checked against the DESIGN.md
schemas and tokenized, then split into train and held-out by user id. A bad row is a DataError
that names the source, the row and the field, or is skipped and counted (`data.on_bad_row: skip`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kernels import MAX_RESPONSES, MIN_RESPONSES
from orchestrator.config import Config
from orchestrator.data.converters import convert_rankings
from orchestrator.data.curation import curate, split_by_user
from orchestrator.data.prompts import DataError, load_rows, prompt_text, tokenize_prompt

logger = logging.getLogger(__name__)


@dataclass
class Demonstration:
    """One SFT example: the formatted prompt's tokens and the response's (ending in EOS)."""

    prompt_ids: list[int]
    response_ids: list[int]


@dataclass
class Ranking:
    """One reward-model element: K responses to one prompt and their order, best first."""

    prompt_ids: list[int]
    response_ids: list[list[int]]
    ranking: list[int]


@dataclass
class ExampleSet:
    """Train and held-out examples of one source, with what was dropped on the way."""

    train: list[Any]
    eval: list[Any]
    skipped: dict[str, int] = field(default_factory=dict)  # bad rows skipped, by field
    curation: dict[str, int] = field(default_factory=dict)  # rows dropped, by filter

    def metrics(self) -> dict[str, int]:
        """Flat counts for metrics.jsonl."""
        out = {"data/train_examples": len(self.train), "data/eval_examples": len(self.eval)}
        out.update({f"data/skipped/{k}": v for k, v in self.skipped.items()})
        out.update({f"data/curation/{k}": v for k, v in self.curation.items()})
        return out


class BadRow(Exception):
    """A row that breaks the schema: the field and the problem."""

    def __init__(self, field_name: str, problem: str):
        super().__init__(problem)
        self.field, self.problem = field_name, problem


def curation_settings(cfg: Config) -> dict[str, Any]:
    """Keyword arguments of `curate` from the data.* settings."""
    d = cfg.data
    return {
        "max_per_user": d.max_prompts_per_user or None,
        "prefix_chars": d.dedup_prefix_chars or None,
        "drop_pii": d.drop_pii,
        "user_field": d.user_field,
    }


def _text(row: dict[str, Any], name: str) -> str:
    value = row.get(name)
    if value is None:  # datasets fills columns a row lacks with None
        raise BadRow(name, "missing")
    if not isinstance(value, str) or not value.strip():
        raise BadRow(name, "empty" if isinstance(value, str) else "must be a string")
    return value


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise BadRow("messages", "must be a non-empty list of {role, content}")
    for m in messages:
        if not isinstance(m, dict) or not m.get("role") or not str(m.get("content") or "").strip():
            raise BadRow("messages", "every message needs a role and non-empty content")


class _Tokens:
    """Formats and tokenizes prompts and responses, checking the lengths."""

    def __init__(self, tokenizer: Any, cfg: Config):
        self.tokenizer, self.cfg = tokenizer, cfg
        self.eos = tokenizer.eos_token_id

    def prompt(self, row: dict[str, Any]) -> list[int]:
        if row.get("messages") is not None:
            _check_messages(row["messages"])
        else:
            _text(row, "prompt")
        ids = tokenize_prompt(row, self.tokenizer, self.cfg.sft.template)
        limit = self.cfg.data.max_prompt_tokens
        if len(ids) > limit:
            raise BadRow(
                "prompt", f"{len(ids)} tokens, longer than data.max_prompt_tokens = {limit}"
            )
        return ids

    def response(self, text: str, prompt_ids: list[int], name: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.eos]
        limit = self.cfg.model.max_seq_len
        if len(prompt_ids) + len(ids) > limit:
            raise BadRow(
                name,
                f"prompt + response is {len(prompt_ids) + len(ids)} tokens, longer than "
                f"model.max_seq_len = {limit}",
            )
        return ids


def _demonstration(row: dict[str, Any], tokens: _Tokens) -> Demonstration:
    messages = row.get("messages")
    if messages is not None:
        _check_messages(messages)
        if messages[-1].get("role") != "assistant" or len(messages) < 2:
            raise BadRow("messages", "must end with an assistant message (the demonstration)")
        response, name = str(messages[-1]["content"]), "messages"
    else:
        response, name = _text(row, "response"), "response"
    prompt_ids = tokens.prompt(row)
    return Demonstration(prompt_ids, tokens.response(response, prompt_ids, name))


def _ranking(row: dict[str, Any], tokens: _Tokens) -> Ranking:
    if row.get("responses") is None and row.get("chosen") is not None:
        responses, ranking = [_text(row, "chosen"), _text(row, "rejected")], [0, 1]
        names = ["chosen", "rejected"]
    else:
        responses, ranking = row.get("responses"), row.get("ranking")
        if responses is None:
            raise BadRow(
                "responses", "missing (expected 'responses' + 'ranking', or 'chosen' + 'rejected')"
            )
        if not isinstance(responses, list):
            raise BadRow("responses", "must be a list of strings")
        k = len(responses)
        if not MIN_RESPONSES <= k <= MAX_RESPONSES:
            raise BadRow(
                "responses",
                f"K = {k} responses; a ranking needs {MIN_RESPONSES} to {MAX_RESPONSES}",
            )
        for i, text in enumerate(responses):
            if not isinstance(text, str) or not text.strip():
                raise BadRow("responses", f"response {i} is empty")
        if ranking is None:
            raise BadRow("ranking", "missing")
        if not isinstance(ranking, list) or sorted(ranking) != list(range(k)):
            raise BadRow("ranking", f"{ranking} is not a permutation of 0..{k - 1}")
        names = ["responses"] * k
    seen: dict[str, int] = {}
    for i, text in enumerate(responses):
        key = text.strip()
        if key in seen:
            raise BadRow("responses", f"responses {seen[key]} and {i} are identical")
        seen[key] = i
    prompt_ids = tokens.prompt(row)
    response_ids = [
        tokens.response(text, prompt_ids, name) for text, name in zip(responses, names, strict=True)
    ]
    return Ranking(prompt_ids, response_ids, [int(i) for i in ranking])


def _load(
    spec: str,
    what: str,
    parse: Callable[[dict[str, Any], _Tokens], Any],
    tokenizer: Any,
    cfg: Config,
    convert: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None,
) -> ExampleSet:
    d = cfg.data
    if not spec:
        raise DataError(f"data.{what} is empty: give a file or a Hub data set")
    rows = load_rows(spec, d.split)
    if convert is not None:
        rows = convert(rows)
    # Row numbers in errors are those of the (converted) source, before curation drops any.
    numbered = [dict(row, _row=i) for i, row in enumerate(rows)]
    kept, report = curate(numbered, prompt_text, **curation_settings(cfg))
    if report.kept < report.total:
        logger.info("%s: %s", spec, report.summary())
    tokens, out = _Tokens(tokenizer, cfg), ExampleSet([], [], curation=dict(report.counts))
    parsed = []
    for row in kept:
        try:
            parsed.append(dict(row, _example=parse(row, tokens)))
        except BadRow as e:
            if d.on_bad_row == "error":
                raise DataError(
                    f"{spec}: row {row['_row']}: field '{e.field}': {e.problem}"
                ) from None
            out.skipped[e.field] = out.skipped.get(e.field, 0) + 1
    if not parsed:
        raise DataError(f"{spec}: no usable {what} ({len(rows)} rows, skipped {out.skipped})")
    if out.skipped:
        logger.warning("%s: skipped bad rows by field: %s", spec, out.skipped)
    train, held_out = split_by_user(parsed, d.eval_fraction, cfg.run.seed, d.user_field)
    out.train = [r["_example"] for r in train]
    out.eval = [r["_example"] for r in held_out]
    return out


def load_demonstrations(cfg: Config, tokenizer: Any) -> ExampleSet:
    """`data.demonstrations` as Demonstration examples, split train / held-out."""
    return _load(cfg.data.demonstrations, "demonstrations", _demonstration, tokenizer, cfg)


def load_rankings(cfg: Config, tokenizer: Any) -> ExampleSet:
    """`data.rankings` (in `data.rankings_format`) as Ranking examples, split train / held-out."""
    spec, fmt = cfg.data.rankings, cfg.data.rankings_format
    convert = None if fmt == "auto" else (lambda rows: convert_rankings(rows, fmt, spec))
    return _load(spec, "rankings", _ranking, tokenizer, cfg, convert)
