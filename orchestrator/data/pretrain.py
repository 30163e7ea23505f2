"""Pretraining text for PPO-ptx (`data.pretrain`, `ppo.ptx_coef`): {"text"} rows, tokenized whole
and cut to the context length. A bad row is a DataError naming it (or is skipped and counted
with `data.on_bad_row: skip`), as every other data set's."""

from __future__ import annotations

from typing import Any

from instructray.orchestrator.data.schema import BadRow, DataError, check_rows, require_text
from instructray.orchestrator.data.sources import load_rows

TINY_PRETRAIN = "tiny://pretrain"


def tokenize_text(text: str, tokenizer: Any, max_tokens: int) -> list[int]:
    """A text's token ids followed by EOS (where the tokenizer has one), at most max_tokens."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return (tokenizer(text, add_special_tokens=False)["input_ids"] + eos)[:max_tokens]


def load_pretrain(
    spec: str, tokenizer: Any, max_tokens: int, split: str = "train", on_bad_row: str = "error"
) -> list[list[int]]:
    """Token ids of each row's text followed by EOS, at most max_tokens of them; rows of fewer
    than 2 tokens teach nothing (one token predicts none) and are bad rows."""
    if not spec:
        raise DataError(
            f"data.pretrain is empty: give a {{text}} file, a Hub data set or {TINY_PRETRAIN}"
        )

    def parse(row: dict[str, Any]) -> list[int]:
        ids = tokenize_text(require_text(row.get("text"), "text"), tokenizer, max_tokens)
        if len(ids) < 2:
            raise BadRow("text", f"{len(ids)} token, a text needs 2 or more")
        return ids

    rows = load_rows(spec, split, key="data.pretrain")
    checked, _, _ = check_rows(spec, rows, parse, what="texts", on_bad_row=on_bad_row)
    return [ids for _, ids in checked]
