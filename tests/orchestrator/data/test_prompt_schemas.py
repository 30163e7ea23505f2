"""Prompts from any schema: a named prompt column, HH-RLHF and OASST1 rows, a user's mapping; each
prompt keeps the other columns of its row (for the reward functions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from testdata import write_jsonl

from instructray.orchestrator.data import DataError, load_prompts
from instructray.orchestrator.data.sources import tiny_gsm8k

FIXTURES = Path(__file__).parents[2] / "fixtures"


def load(spec, tok, **kwargs):
    return load_prompts(spec, tok, max_prompt_tokens=512, **kwargs)


def test_a_named_prompt_column_keeps_the_other_columns(tmp_path, tok):
    rows = tiny_gsm8k(6)
    prompts = load(write_jsonl(tmp_path / "gsm8k.jsonl", rows), tok, prompt_field="question")
    assert len(prompts) == 6
    for row, text, columns in zip(rows, prompts.texts, prompts.columns, strict=True):
        assert row["question"] in text and text != row["question"]  # through the chat template
        assert columns == {"answer": row["answer"], "id": row["id"], "raw_prompts": row["question"]}
    assert prompts.column_names() == ["answer", "id", "raw_prompts"]


def test_a_missing_prompt_column_names_the_row_and_the_columns(tmp_path, tok):
    rows = tiny_gsm8k(3)
    rows[1] = {"query": "what?", "answer": "#### 1"}
    path = write_jsonl(tmp_path / "gsm8k.jsonl", rows)
    with pytest.raises(DataError) as e:
        load(path, tok, prompt_field="question")
    assert str(e.value) == (
        f"{path}: line 2: field 'question': missing (data.prompt_field = 'question'; the row "
        f"has: answer, query)"
    )
    skipped = load(path, tok, prompt_field="question", on_bad_row="skip")
    assert len(skipped) == 2 and skipped.skipped == {"question": 1}


def test_hh_rlhf_rows_serve_as_prompts(tok):
    spec = str(FIXTURES / "hh_rlhf_sample.jsonl")
    prompts = load(spec, tok, fmt="hh-rlhf")
    first = json.loads(Path(spec).read_text().splitlines()[0])
    messages = prompts.columns[0]["messages"]
    assert messages == [{"role": "user", "content": "What is the capital of France?"}]
    assert prompts.columns[0]["raw_prompts"] == messages
    assert first["chosen"].endswith(prompts.columns[0]["chosen"])
    assert first["rejected"].endswith(prompts.columns[0]["rejected"])
    assert "What is the capital of France?" in prompts.texts[0]
    for columns in prompts.columns:  # the dialogue up to the last assistant turn
        assert columns["messages"][-1]["role"] == "user"


def test_oasst1_trees_serve_as_prompts(tok):
    prompts = load(str(FIXTURES / "oasst1_sample.jsonl"), tok, fmt="oasst1")
    assert len(prompts) > 0
    for columns in prompts.columns:
        assert (
            columns["messages"][0]["role"] == "user" and columns["messages"][-1]["role"] == "user"
        )
        assert "user_id" in columns


def test_a_user_mapping_runs_first(tmp_path, tok):
    def mapper(row):
        if row["q"] == "boom":
            raise KeyError("q")
        return {"prompt": f"Q: {row['q']}", "label": row["a"]}

    path = write_jsonl(tmp_path / "p.jsonl", [{"q": "two?", "a": 2}, {"q": "boom", "a": 0}])
    with pytest.raises(DataError, match=r"line 2: field 'data.prompt_map': raised KeyError: 'q'"):
        load(path, tok, mapper=mapper)
    prompts = load(path, tok, mapper=mapper, on_bad_row="skip")
    assert prompts.columns == [{"label": 2, "raw_prompts": "Q: two?"}]
