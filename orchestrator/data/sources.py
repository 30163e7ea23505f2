"""Where rows come from: local JSONL/JSON/Parquet/CSV files and folders, Hub data sets (all read
by `datasets.load_dataset`), and the built-in tiny sets.

A local file is looked at before `datasets` reads it, because `datasets` loses what a user needs
to fix a file: an empty file, or the line of a JSONL file that is not JSON or not an object, is
a DataError naming the file and the line; JSONL rows keep their line numbers (`Rows.places`).
"""

from __future__ import annotations

import codecs
import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from instructray.orchestrator.data.schema import DataError, Rows, shown

BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
TINY_SCHEME = "tiny://"
TINY_PROMPTS = "tiny://prompts"
OBJECT = "a row must be a JSON object {...}"


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


def tiny_pretrain(n: int = 256, seed: int = 0) -> list[dict[str, str]]:
    """Text for tiny PPO-ptx runs: the world of the tiny prompts as plain sentences, unaligned
    (cats and the other things alike)."""
    rng = random.Random(seed + 3)
    subjects = ["the cat", "a dog", "my friend", "the teacher", "our team", "the sea"]
    verbs = ["likes", "sees", "is near", "sat by", "walks to"]
    return [
        {"text": f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(subjects)}."}
        for _ in range(n)
    ]


def tiny_gsm8k(n: int = 256, seed: int = 0) -> list[dict[str, str]]:
    """Math word problems in GSM8K's public format, {question, answer, id}: the answer a worked
    solution that ends in `#### N` (the reference), small sums and products (to check by hand).
    PPO reads them with data.prompt_field=question; the reward reads `answer`."""
    rng, rows = random.Random(seed + 4), []
    for i in range(n):
        a, b = rng.randint(2, 30), rng.randint(2, 9)
        if i % 2:
            question, total = f"Tom has {a} apples and buys {b} more. How many now?", a + b
            work = f"Tom has {a} + {b} = <<{a}+{b}={total}>>{total} apples."
        else:
            question, total = f"A box holds {b} cats. How many cats in {a} boxes?", a * b
            work = f"{a} boxes hold {a} * {b} = <<{a}*{b}={total}>>{total} cats."
        rows.append({"question": question, "answer": f"{work}\n#### {total}", "id": f"q{i}"})
    return rows


TINY_DATA = {
    TINY_PROMPTS: tiny_prompts,
    "tiny://demonstrations": tiny_demonstrations,
    "tiny://rankings": tiny_rankings,
    "tiny://pretrain": tiny_pretrain,
    "tiny://gsm8k": tiny_gsm8k,
}


def _empty(spec: str, what: str = "file") -> DataError:
    return DataError(f"{spec}: the {what} is empty (no rows)")


def _is_blank(path: Path) -> bool:
    """Whether the file holds nothing but whitespace (read until its first other byte)."""
    with open(path, "rb") as f:
        while chunk := f.read(1 << 16):
            if chunk.strip():
                return False
    return True


def _json_lines(lines: Iterable[bytes], spec: str, rows: list | None = None) -> list[str]:
    """'line N' of each row of JSONL text (the rows go to `rows`, if given); DataError at the
    first line that is not a JSON object. Blank lines are no rows (datasets skips them too)."""
    places = []
    for n, line in enumerate(lines, 1):
        if n == 1:
            line = line.removeprefix(codecs.BOM_UTF8)
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            # json's own wording may end in " at" ("Invalid control character at")
            reason = f"{e.msg.removesuffix(' at')}, column {e.colno}"
            raise DataError(f"{spec}: line {n}: not valid JSON ({reason})") from None
        except UnicodeDecodeError as e:
            raise DataError(f"{spec}: line {n}: not UTF-8 text ({e.reason})") from None
        if not isinstance(value, dict):
            raise DataError(f"{spec}: line {n}: {OBJECT}, got {shown(value)}")
        places.append(f"line {n}")
        if rows is not None:
            rows.append(value)
    if not places:
        raise _empty(spec)
    return places


def _json_document(data: bytes, spec: str, rows: list | None = None) -> list[str] | None:
    """Check a .json file: an array of row objects, one object, or JSON lines (datasets reads
    all three). -> the places of JSON lines, else None (rows are counted 'row N')."""
    try:
        value = json.loads(data)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # more than one document: JSON lines in a .json file
            return _json_lines(data.split(b"\n"), spec, rows)
        raise DataError(
            f"{spec}: line {e.lineno}, column {e.colno}: not valid JSON ({e.msg})"
        ) from None
    except UnicodeDecodeError as e:
        raise DataError(f"{spec}: not UTF-8 text ({e.reason})") from None
    if isinstance(value, dict):
        value = [value]  # one object: one row
    if not isinstance(value, list):
        raise DataError(f"{spec}: expected a JSON array of row objects, got {shown(value)}")
    if not value:
        raise _empty(spec)
    for i, row in enumerate(value):
        if not isinstance(row, dict):
            raise DataError(f"{spec}: row {i + 1}: {OBJECT}, got {shown(row)}")
    if rows is not None:
        rows.extend(value)
    return None


def check_file(path: Path, spec: str, rows: list | None = None) -> list[str] | None:
    """DataError if a local data file is empty or (JSON, JSONL) not rows of JSON objects.
    -> the places of its rows when they are lines ('line N'), else None. The rows of a JSON
    file go to `rows`, if given."""
    if _is_blank(path):
        raise _empty(spec)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with open(path, "rb") as f:  # line by line: a JSONL file may be large
            return _json_lines(f, spec, rows)
    if suffix == ".json":
        return _json_document(path.read_bytes().removeprefix(codecs.BOM_UTF8), spec, rows)
    return None


def _folder_files(folder: Path) -> list[Path]:
    """The data files of a folder that datasets reads (it passes over hidden and _ names)."""
    return [
        f
        for f in sorted(folder.rglob("*"))
        if f.is_file()
        and f.suffix.lower() in BUILDERS
        and not any(p.startswith((".", "_")) for p in f.relative_to(folder).parts)
    ]


def _reason(e: BaseException) -> str:
    """What went wrong, on one line: the message and its causes' (datasets wraps the useful one),
    or the type's name when they are all blank."""
    parts: list[str] = []
    cause: BaseException | None = e
    while cause is not None and len(parts) < 3:
        text = " ".join(str(cause).split())
        if text and text not in parts:
            parts.append(text)
        cause = cause.__cause__
    return ": ".join(parts)[:300] or type(e).__name__


def load_rows(spec: str, split: str = "train", key: str | None = None) -> Rows:
    """Rows of a local JSONL/JSON/Parquet/CSV file or folder, a Hub data set name, or one of
    the built-in tiny sets (TINY_DATA); `key` (e.g. 'data.prompts') names the setting in errors
    about the name itself. DataError on a source that is missing, empty or unreadable."""
    if spec in TINY_DATA:
        return Rows(TINY_DATA[spec]())
    if spec.startswith(TINY_SCHEME):
        raise DataError(
            f"{key or spec}: unknown built-in data set '{spec}', expected one of "
            f"{', '.join(TINY_DATA)}"
        )
    import datasets
    from datasets.data_files import EmptyDatasetError

    path, places = Path(spec), None
    if path.is_file():
        builder = BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise DataError(
                f"{spec}: unsupported file type '{path.suffix}', expected one of "
                f"{', '.join(BUILDERS)}"
            )
        places = check_file(path, spec)
        args: tuple[str, ...] = (builder,)
        kwargs = {"data_files": str(path), "split": "train"}
    elif path.is_dir():
        for f in _folder_files(path):
            check_file(f, str(f))
        args, kwargs = (str(path),), {"split": split}
    elif spec.startswith((".", "/")) or path.suffix.lower() in BUILDERS:
        raise DataError(f"{spec}: no such file or folder")
    else:
        args, kwargs = (spec,), {"split": split}
    try:
        rows = list(datasets.load_dataset(*args, **kwargs))
    except EmptyDatasetError:
        raise DataError(
            f"{spec}: the folder holds no data files (expected {', '.join(BUILDERS)} files)"
        ) from None
    except Exception as e:  # datasets raises many types; the user needs the source and the cause
        if "corresponds to no data" in str(e):  # how datasets says a split has no rows
            rows = []
        elif path.is_file() and path.suffix.lower() in (".jsonl", ".json"):
            # Every row is a JSON object (check_file said so), but datasets could not make one
            # table of them: it reads mixed types through pandas, which trips on blank lines.
            # The schema check names what is wrong; read the rows as they are.
            rows = []
            check_file(path, spec, rows)
        else:
            raise DataError(f"{spec}: cannot load data set: {_reason(e)}") from e
    if not rows:
        raise _empty(spec, "file" if path.is_file() else "data set")
    if places is not None and len(places) != len(rows):
        places = None  # datasets split the lines otherwise: count rows rather than point wrongly
    return Rows(rows, places)
