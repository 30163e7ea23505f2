"""Training examples of the supervised stages: demonstrations (SFT) and rankings (reward model).

Rows come through `load_rows` (local files or the Hub), are converted from a public format when
`data.rankings_format` says so, curated (curation.py), checked against the row schemas (schema.py)
(schema.py) and tokenized, then split into train and held-out by user id. A bad row is a
DataError that names the source, the row and the field, or is skipped and counted
(`data.on_bad_row: skip`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from instructray.orchestrator.config import Config
from instructray.orchestrator.config.functions import load_function
from instructray.orchestrator.data.converters import convert_rankings
from instructray.orchestrator.data.curation import split_by_user
from instructray.orchestrator.data.prompts import PromptSet, checked_prompt, load_prompts
from instructray.orchestrator.data.schema import (
    BadRow,
    DataError,
    check_rows,
    demonstration_response,
    ranked_responses,
)
from instructray.orchestrator.data.sources import load_rows


@dataclass
class Demonstration:
    """One SFT example: the formatted prompt's tokens and the response's (ending in EOS)."""

    prompt_ids: list[int]
    response_ids: list[int]


@dataclass
class Ranking:
    """One reward-model element: K responses to one prompt and their order as tie groups, best
    first ([[2], [0, 1]]: response 2 best, 0 and 1 tied)."""

    prompt_ids: list[int]
    response_ids: list[list[int]]
    ranking: list[list[int]]


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


def curation_settings(cfg: Config) -> dict[str, Any]:
    """Keyword arguments of `curate` from the data.* settings."""
    d = cfg.data
    return {
        "max_per_user": d.max_prompts_per_user or None,
        "prefix_chars": d.dedup_prefix_chars or None,
        "drop_pii": d.drop_pii,
        "user_field": d.user_field,
    }


class _Tokens:
    """Formats and tokenizes prompts and responses, checking the lengths."""

    def __init__(self, tokenizer: Any, cfg: Config):
        self.tokenizer, self.cfg = tokenizer, cfg
        self.eos = tokenizer.eos_token_id

    def prompt(self, row: dict[str, Any]) -> list[int]:
        _, ids = checked_prompt(
            row, self.tokenizer, self.cfg.sft.template, self.cfg.data.max_prompt_tokens
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
    response, name = demonstration_response(row)
    prompt_ids = tokens.prompt(row)
    return Demonstration(prompt_ids, tokens.response(response, prompt_ids, name))


def _ranking(row: dict[str, Any], tokens: _Tokens) -> Ranking:
    responses, ranking, names = ranked_responses(row)
    prompt_ids = tokens.prompt(row)
    response_ids = [
        tokens.response(text, prompt_ids, name) for text, name in zip(responses, names, strict=True)
    ]
    return Ranking(prompt_ids, response_ids, ranking)


def _load(
    spec: str,
    what: str,
    parse: Callable[[dict[str, Any], _Tokens], Any],
    tokenizer: Any,
    cfg: Config,
    convert: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None,
    drop: tuple[str, Callable[[Any], bool]] | None = None,
) -> ExampleSet:
    d = cfg.data
    if not spec:
        raise DataError(f"data.{what} is empty: give a file or a Hub data set")
    rows = load_rows(spec, d.split, key=f"data.{what}")
    if convert is not None:
        rows = convert(rows)  # converted rows keep the places of the rows they came from
    tokens = _Tokens(tokenizer, cfg)
    parsed, skipped, curated = check_rows(
        spec,
        rows,
        lambda row: parse(row, tokens),
        what=what,
        on_bad_row=d.on_bad_row,
        curation=curation_settings(cfg),
    )
    if drop is not None:  # examples that would teach nothing, counted as curated away
        name, useless = drop
        kept = [(row, example) for row, example in parsed if not useless(example)]
        if len(kept) < len(parsed):
            curated = {**curated, name: len(parsed) - len(kept)}
        parsed = kept
    train, held_out = split_by_user(
        [dict(row, _example=example) for row, example in parsed],
        d.eval_fraction,
        cfg.run.seed,
        d.user_field,
    )
    return ExampleSet(
        [r["_example"] for r in train], [r["_example"] for r in held_out], skipped, curated
    )


def load_demonstrations(cfg: Config, tokenizer: Any) -> ExampleSet:
    """`data.demonstrations` as Demonstration examples, split train / held-out."""
    return _load(cfg.data.demonstrations, "demonstrations", _demonstration, tokenizer, cfg)


def load_rankings(cfg: Config, tokenizer: Any) -> ExampleSet:
    """`data.rankings` (in `data.rankings_format`) as Ranking examples, split train / held-out."""
    spec, fmt = cfg.data.rankings, cfg.data.rankings_format
    convert = None if fmt == "auto" else (lambda rows: convert_rankings(rows, fmt, spec))
    all_tied = ("all_tied", lambda e: len(e.ranking) < 2)  # no untied pair: nothing to learn
    return _load(spec, "rankings", _ranking, tokenizer, cfg, convert, all_tied)


def load_prompt_set(cfg: Config, tokenizer: Any) -> PromptSet:
    """`data.prompts` as PPO will sample them: curated, checked, formatted and tokenized."""
    d = cfg.data
    return load_prompts(
        d.prompts,
        tokenizer,
        max_prompt_tokens=d.max_prompt_tokens,
        template=cfg.sft.template,
        split=d.split,
        on_bad_row=d.on_bad_row,
        curation=curation_settings(cfg),
        prompt_field=d.prompt_field,
        fmt=d.prompts_format,
        mapper=load_function(d.prompt_map, "data.prompt_map") if d.prompt_map else None,
    )
