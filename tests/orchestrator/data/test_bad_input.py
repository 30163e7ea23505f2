"""Every bad data file is refused before anything runs, in one line that says what to fix: the
file, the line (JSONL) or row (counted from 1), the field, the value seen and what is expected."""

from __future__ import annotations

import json

import pytest

from instructray.orchestrator.config import load_config
from instructray.orchestrator.data import (
    DataError,
    load_demonstrations,
    load_prompts,
    load_rankings,
)
from instructray.orchestrator.data.sources import _reason

CURATION = {"max_per_user": 200, "prefix_chars": 64, "drop_pii": True, "user_field": "user_id"}
PROMPT = {"prompt": "Say hi."}
DEMO = {"prompt": "Say hi.", "response": "hi"}
RANKED = {"prompt": "Rank.", "responses": ["a cat", "a dog"], "ranking": [1, 0]}
HH = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: Go."}
OASST = {  # one prompter message with every column the converter reads
    "message_id": "root",
    "parent_id": None,
    "user_id": "u",
    "created_date": "2023-04-01",
    "text": "Q",
    "role": "prompter",
    "deleted": False,
    "rank": None,
}
LONG = ["tell me " * 20]


def _load(stage, spec, tok, *overrides):
    """Load `spec` as the stage's data, with curation on (it must never trip over a bad row)."""
    if stage == "prompts":
        return load_prompts(spec, tok, max_prompt_tokens=32, curation=CURATION)
    args = ["--data.eval_fraction=0", "--model.max_seq_len=64", f"--data.{stage}={spec}"]
    cfg = load_config(None, [*args, *overrides])
    return (load_demonstrations if stage == "demonstrations" else load_rankings)(cfg, tok)


def _text(lines) -> str:
    return "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)


# (stage, file name, its lines: rows as dicts or raw text, what the message says after the name)
CASES = [
    (
        "prompts",
        "p.jsonl",
        [PROMPT, {"prompt": 42}],
        "line 2: field 'prompt': must be a non-empty string, got int 42",
    ),
    (
        "prompts",
        "p.jsonl",
        [PROMPT, "", {"prompt": ["tell", "me"]}],
        "line 3: field 'prompt': must be a non-empty string, got list ['tell', 'me']",
    ),
    (
        "prompts",
        "p.jsonl",
        [PROMPT, {"prompt": LONG}],
        f"line 2: field 'prompt': must be a non-empty string, got list {repr(LONG)[:57]}...",
    ),
    (
        "prompts",
        "p.jsonl",
        [PROMPT, {"messages": "a string"}],
        "line 2: field 'messages': must be a non-empty list of {role, content}, got str 'a string'",
    ),
    (
        "prompts",
        "p.jsonl",
        [PROMPT, {"messages": ["tell", "me"]}],
        "line 2: field 'messages': messages[0]: must be a {role, content}, got str 'tell'",
    ),
    (
        "prompts",
        "p.jsonl",
        [{"messages": [{"content": "hi"}]}],
        "line 1: field 'messages': messages[0]['role']: missing",
    ),
    (
        "prompts",
        "p.jsonl",
        [{"messages": [{"role": "user", "content": 5}]}],
        "line 1: field 'messages': messages[0]['content']: must be a non-empty string, got int 5",
    ),
    (
        "prompts",
        "p.jsonl",
        [PROMPT, PROMPT, '{"prompt": }'],
        "line 3: not valid JSON (Expecting value, column 12)",
    ),
    (
        "prompts",
        "p.jsonl",
        [PROMPT, "[1, 2]"],
        "line 2: a row must be a JSON object {...}, got list [1, 2]",
    ),
    ("prompts", "p.jsonl", ['"x"'], "line 1: a row must be a JSON object {...}, got str 'x'"),
    ("prompts", "p.jsonl", [], "the file is empty (no rows)"),
    ("prompts", "p.jsonl", ["  ", ""], "the file is empty (no rows)"),
    (
        "prompts",
        "p.json",
        ['[{"prompt": "ok"},', ' {"prompt": }]'],
        "line 2, column 13: not valid JSON (Expecting value)",
    ),
    ("prompts", "p.json", ["[]"], "the file is empty (no rows)"),
    ("prompts", "p.csv", ["prompt"], "the file is empty (no rows)"),
    (
        "prompts",
        "p.csv",
        ["prompt", "hello", '""'],
        "row 2: field 'prompt': missing (expected 'prompt' or 'messages')",
    ),
    (
        "demonstrations",
        "d.jsonl",
        [DEMO, {"prompt": "x", "response": 7}],
        "line 2: field 'response': must be a non-empty string, got int 7",
    ),
    (
        "demonstrations",
        "d.jsonl",
        [{"messages": [{"role": "user", "content": "hi"}]}],
        "line 1: field 'messages': must end with an assistant message (the demonstration), "
        "got roles list ['user']",
    ),
    (
        "demonstrations",
        "d.jsonl",
        [DEMO, {"prompt": {"text": "x"}, "response": "y"}],
        "line 2: field 'prompt': must be a non-empty string, got dict {'text': 'x'}",
    ),
    (
        "rankings",
        "r.jsonl",
        [RANKED, {**RANKED, "responses": "a, b"}],
        "line 2: field 'responses': must be a list of 2 to 9 strings, got str 'a, b'",
    ),
    (
        "rankings",
        "r.jsonl",
        [RANKED, {**RANKED, "responses": ["a", 3]}],
        "line 2: field 'responses': responses[1]: must be a non-empty string, got int 3",
    ),
    (
        "rankings",
        "r.jsonl",
        [RANKED, {**RANKED, "ranking": "1,0"}],
        "line 2: field 'ranking': "
        "must be a list of response indices 0..1, best first, got str '1,0'",
    ),
    (
        "rankings",
        "r.jsonl",
        [RANKED, {**RANKED, "ranking": [1, 1]}],
        "line 2: field 'ranking': [1, 1]: index 1 appears twice",
    ),
    (
        "rankings",
        "r.jsonl",
        [RANKED, {"prompt": "x", "chosen": 5, "rejected": "no"}],
        "line 2: field 'chosen': must be a non-empty string, got int 5",
    ),
    (
        "rankings",
        "r.jsonl",
        [RANKED, {"prompt": "x", "chosen": "a", "rejected": "a"}],
        "line 2: field 'rejected': rejected is identical to chosen",
    ),
    (
        "rankings",
        "r.jsonl",
        [RANKED, "", "{not json"],
        "line 3: not valid JSON (Expecting property name enclosed in double quotes, column 2)",
    ),
]


@pytest.mark.parametrize(("stage", "name", "lines", "message"), CASES)
def test_a_bad_file_is_one_line_naming_file_place_field_and_value(
    tmp_path, tok, stage, name, lines, message
):
    path = tmp_path / name
    path.write_text(_text(lines))
    with pytest.raises(DataError) as e:
        _load(stage, str(path), tok)
    assert str(e.value) == f"{path}: {message}"


@pytest.mark.parametrize(
    ("fmt", "good", "bad", "message"),
    [
        (
            "hh-rlhf",
            HH,
            {**HH, "rejected": 3},
            "field 'rejected': must be a non-empty string, got int 3",
        ),
        ("oasst1", OASST, {**OASST, "created_date": None}, "field 'created_date': missing"),
        ("oasst1", OASST, {**OASST, "rank": "first"}, "field 'rank': must be an integer or null"),
    ],
)
def test_public_formats_name_the_line_of_the_source_file(tmp_path, tok, fmt, good, bad, message):
    path = tmp_path / "r.jsonl"
    path.write_text(_text([good, "", bad]))  # the blank line: rows and lines differ, lines count
    with pytest.raises(DataError) as e:
        _load("rankings", str(path), tok, f"--data.rankings_format={fmt}")
    assert str(e.value).startswith(f"{path}: line 3: {message}"), str(e.value)


@pytest.mark.parametrize("stage", ["prompts", "demonstrations", "rankings"])
def test_an_unknown_tiny_name_lists_the_built_in_sets(tok, stage):
    with pytest.raises(DataError) as e:
        _load(stage, "tiny://nosuch", tok)
    assert str(e.value) == (
        f"data.{stage}: unknown built-in data set 'tiny://nosuch', expected one of "
        "tiny://prompts, tiny://demonstrations, tiny://rankings, tiny://pretrain, tiny://gsm8k"
    )


def test_folders_and_missing_paths_are_clear(tmp_path, tok):
    (tmp_path / "README.md").write_text("# no data here\n")
    with pytest.raises(DataError, match="the folder holds no data files"):
        _load("prompts", str(tmp_path), tok)
    (tmp_path / "train.jsonl").write_text(_text([PROMPT, "{oops"]))
    with pytest.raises(DataError) as e:
        _load("prompts", str(tmp_path), tok)
    assert str(e.value).startswith(f"{tmp_path / 'train.jsonl'}: line 2: not valid JSON (")
    with pytest.raises(DataError, match="nope.jsonl: no such file or folder"):
        _load("prompts", str(tmp_path / "nope.jsonl"), tok)


def test_good_json_lines_still_load_with_blank_lines_and_a_bom(tmp_path, tok):
    (tmp_path / "p.jsonl").write_text("\ufeff" + _text([PROMPT, "", {"prompt": "Say bye."}]))
    (tmp_path / "p.json").write_text(_text([PROMPT, {"prompt": "Say bye."}]))  # lines in .json
    for name in ("p.jsonl", "p.json"):
        assert len(_load("prompts", str(tmp_path / name), tok)) == 2


def test_a_load_failure_always_has_a_reason():
    try:
        raise ValueError("  ") from StopIteration()
    except ValueError as e:
        assert _reason(e) == "ValueError"
    outer = RuntimeError("An error occurred while generating the dataset")
    outer.__cause__ = ValueError("JSON parse error: Invalid value. in row 1")
    assert _reason(outer) == (
        "An error occurred while generating the dataset: JSON parse error: Invalid value. in row 1"
    )
