"""Prompt sets: loading (datasets.load_dataset), the DESIGN.md schemas, formatting, batching.

Bad rows get a one-line error naming the file, the row and the field, or are skipped and counted
when `data.on_bad_row: skip`.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
TINY_PROMPTS = "tiny://prompts"


class DataError(ValueError):
    """Bad input data; the message names the source, row and field."""


def tiny_prompts(n: int = 256, seed: int = 0) -> list[dict[str, str]]:
    """A seeded set of short instructions for runs that need no download."""
    rng = random.Random(seed)
    verbs = ["Tell me about", "Write a line about", "Explain", "Describe", "List facts about"]
    things = ["the cat", "a dog", "my friend", "the teacher", "our team", "the model", "the sea"]
    return [{"prompt": f"{rng.choice(verbs)} {rng.choice(things)}."} for _ in range(n)]


def tiny_demonstrations(n: int = 128, seed: int = 0) -> list[dict[str, str]]:
    """Demonstrations for tiny runs: the tiny prompts answered by a labeler who likes cats."""
    rng = random.Random(seed + 1)
    answers = ["the cat is here.", "a cat and the cat.", "my cat likes the sun.", "the cat sat."]
    return [
        {"prompt": row["prompt"], "response": rng.choice(answers), "user_id": f"user{i % 32}"}
        for i, row in enumerate(tiny_prompts(n, seed))
    ]


def tiny_rankings(n: int = 128, seed: int = 0) -> list[dict[str, Any]]:
    """K = 4 rankings for tiny runs: the more 'cat' in a response, the better it ranks."""
    rng = random.Random(seed + 2)
    others = ["dog", "sun", "sea", "tree", "team", "the", "a"]
    rows = []
    for i, row in enumerate(tiny_prompts(n, seed)):
        counts = rng.sample(range(5), 4)
        responses = []
        for c in counts:
            words = ["cat"] * c + [rng.choice(others) for _ in range(4 - c)]
            rng.shuffle(words)
            responses.append(" ".join(words) + ".")
        ranking = sorted(range(4), key=lambda j: -counts[j])
        rows.append(
            {
                "prompt": row["prompt"],
                "responses": responses,
                "ranking": ranking,
                "user_id": f"user{i % 32}",
            }
        )
    return rows


TINY_DATA = {
    TINY_PROMPTS: tiny_prompts,
    "tiny://demonstrations": tiny_demonstrations,
    "tiny://rankings": tiny_rankings,
}


def load_rows(spec: str, split: str = "train") -> list[dict[str, Any]]:
    """Rows of a local JSONL/JSON/Parquet/CSV file or folder, a Hub data set name, or one of
    the built-in tiny sets (TINY_DATA)."""
    if spec in TINY_DATA:
        return TINY_DATA[spec]()
    import datasets

    path = Path(spec)
    try:
        if path.is_file():
            builder = BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise DataError(
                    f"{spec}: unsupported file type '{path.suffix}', expected one of "
                    f"{', '.join(BUILDERS)}"
                )
            ds = datasets.load_dataset(builder, data_files=str(path), split="train")
        elif path.is_dir():
            ds = datasets.load_dataset(str(path), split=split)
        elif spec.startswith((".", "/")) or path.suffix.lower() in BUILDERS:
            raise DataError(f"{spec}: no such file or folder")
        else:
            ds = datasets.load_dataset(spec, split=split)
    except DataError:
        raise
    except Exception as e:  # datasets raises many types; the user needs the source and the cause
        raise DataError(f"{spec}: cannot load data set: {' '.join(str(e).split())[:300]}") from e
    return list(ds)


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


def prompt_text(row: dict[str, Any]) -> str:
    """The user-visible prompt of a row (what curation compares)."""
    messages = row.get("messages")
    if messages and isinstance(messages, list):
        turns = [m for m in messages if isinstance(m, dict)]
        if turns and turns[-1].get("role") == "assistant" and len(turns) > 1:
            turns = turns[:-1]  # a demonstration's answer is not part of its prompt
        return "\n".join(str(m.get("content", "")) for m in turns)
    prompt = row.get("prompt")
    return prompt if isinstance(prompt, str) else ""


@dataclass
class PromptSet:
    """Tokenized prompts of one source, with the counts of what was skipped."""

    texts: list[str]
    token_ids: list[list[int]]
    skipped: dict[str, int] = field(default_factory=dict)  # bad rows skipped, by field
    curation: dict[str, int] = field(default_factory=dict)  # rows dropped, by filter

    def __len__(self) -> int:
        return len(self.texts)

    def metrics(self) -> dict[str, int]:
        """Flat counts for metrics.jsonl (as ExampleSet.metrics)."""
        out = {"data/prompts": len(self)}
        out.update({f"data/skipped/{k}": v for k, v in self.skipped.items()})
        out.update({f"data/curation/{k}": v for k, v in self.curation.items()})
        return out


def row_problem(row: dict[str, Any]) -> tuple[str, str] | None:
    """(field, problem) if the row does not follow the prompt schema."""
    if "messages" in row and row["messages"] is not None:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs:
            return "messages", "must be a non-empty list of {role, content}"
        for m in msgs:
            if (
                not isinstance(m, dict)
                or not m.get("role")
                or not str(m.get("content", "")).strip()
            ):
                return "messages", "every message needs a role and non-empty content"
        return None
    if row.get("prompt") is None:  # datasets fills columns a row lacks with None
        return "prompt", "missing (expected 'prompt' or 'messages')"
    if not isinstance(row["prompt"], str) or not row["prompt"].strip():
        return "prompt", "empty"
    return None


def load_prompts(
    spec: str,
    tokenizer: Any,
    *,
    max_prompt_tokens: int,
    template: str = "{prompt}\n",
    split: str = "train",
    on_bad_row: str = "error",
    curation: dict[str, Any] | None = None,
) -> PromptSet:
    """Load, curate (`curation`: keyword arguments of orchestrator.curation.curate), validate,
    format and tokenize a prompt set; raise DataError on bad input."""
    from orchestrator.data.curation import curate

    if not spec:
        raise DataError(
            "data.prompts is empty: give a prompt file, a Hub data set or tiny://prompts"
        )
    rows = load_rows(spec, split)
    numbered = list(enumerate(rows))
    out = PromptSet([], [])
    if curation is not None:
        kept, report = curate(
            [dict(row, _row=i) for i, row in numbered],
            lambda row: (
                str(row.get("prompt") or "")
                + "\n".join(str(m.get("content", "")) for m in row.get("messages") or [])
            ),
            **curation,
        )
        numbered = [(row.pop("_row"), row) for row in kept]
        out.curation = dict(report.counts)
        if report.kept < report.total:
            logger.info("%s: %s", spec, report.summary())
    for i, row in numbered:
        problem = row_problem(row)
        if problem is None:
            text = format_prompt(row, tokenizer, template)  # kept: the set holds its texts
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) > max_prompt_tokens:
                problem = (
                    "prompt",
                    f"{len(ids)} tokens, longer than data.max_prompt_tokens = {max_prompt_tokens}",
                )
        if problem is not None:
            if on_bad_row == "error":
                raise DataError(f"{spec}: row {i}: field '{problem[0]}': {problem[1]}")
            out.skipped[problem[0]] = out.skipped.get(problem[0], 0) + 1
            continue
        out.texts.append(text)
        out.token_ids.append(ids)
    if not out.texts:
        raise DataError(f"{spec}: no usable prompts ({len(rows)} rows, skipped {out.skipped})")
    if out.skipped:
        logger.warning("%s: skipped bad rows by field: %s", spec, out.skipped)
    return out


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
