"""Prompt loading: the schemas, every local format, bad rows named, the seeded sampler."""

from __future__ import annotations

import json

import pytest
from testdata import write_jsonl

from instructray.orchestrator.data import DataError, PromptSampler, load_prompts, load_rows


def test_every_local_format_loads_the_same_rows(tmp_path):
    import pandas as pd

    rows = [{"prompt": "Tell me about the cat."}, {"prompt": "Explain the sea."}]
    pd.DataFrame(rows).to_parquet(tmp_path / "p.parquet")
    pd.DataFrame(rows).to_csv(tmp_path / "p.csv", index=False)
    (tmp_path / "p.json").write_text(json.dumps(rows))
    write_jsonl(tmp_path / "p.jsonl", rows)
    for ext in ("jsonl", "json", "parquet", "csv"):
        assert load_rows(str(tmp_path / f"p.{ext}")) == rows, ext


def test_prompt_and_messages_rows_use_the_chat_template(tmp_path, tok):
    rows = [
        {"prompt": "hi"},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
    ]
    ps = load_prompts(write_jsonl(tmp_path / "p.jsonl", rows), tok, max_prompt_tokens=32)
    assert ps.texts == ["<|user|>hi<|assistant|>", "<|user|>hi<|assistant|>"]
    assert ps.token_ids[0] == tok(ps.texts[0], add_special_tokens=False)["input_ids"]


def test_bad_rows_name_file_row_and_field(tmp_path, tok):
    cases = [
        ({"text": "x"}, "line 2: field 'prompt': missing"),
        ({"prompt": "  "}, "line 2: field 'prompt': must be a non-empty string, got str '  '"),
        ({"messages": []}, "line 2: field 'messages'"),
        ({"prompt": "cat " * 100}, "longer than data.max_prompt_tokens = 32"),
    ]
    for bad, message in cases:
        path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok"}, bad])
        with pytest.raises(DataError) as e:
            load_prompts(path, tok, max_prompt_tokens=32)
        assert str(e.value).startswith(f"{path}: ") and message in str(e.value), str(e.value)


def test_skip_mode_counts_bad_rows(tmp_path, tok):
    rows = [{"prompt": "ok"}, {"prompt": ""}, {"text": "x"}, {"prompt": "fine"}]
    ps = load_prompts(
        write_jsonl(tmp_path / "p.jsonl", rows), tok, max_prompt_tokens=32, on_bad_row="skip"
    )
    assert len(ps) == 2 and ps.skipped == {"prompt": 2}
    assert ps.metrics() == {"data/prompts": 2, "data/skipped/prompt": 2}


def test_empty_or_missing_sources_are_clear(tmp_path, tok):
    with pytest.raises(DataError, match="no usable prompts"):
        load_prompts(
            write_jsonl(tmp_path / "e.jsonl", [{"prompt": ""}]),
            tok,
            max_prompt_tokens=8,
            on_bad_row="skip",
        )
    with pytest.raises(DataError, match="no such file"):
        load_prompts(str(tmp_path / "nope.jsonl"), tok, max_prompt_tokens=8)
    with pytest.raises(DataError, match="data.prompts is empty"):
        load_prompts("", tok, max_prompt_tokens=8)


def test_sampler_covers_each_epoch_and_resumes():
    s = PromptSampler(size=5, batch_size=3, seed=1)
    batches = [s.next_batch() for _ in range(5)]  # 15 draws = 3 epochs of 5
    flat = [i for b in batches for i in b]
    for epoch in range(3):
        assert sorted(flat[epoch * 5 : epoch * 5 + 5]) == list(range(5))
    assert flat[:5] != flat[5:10]  # reshuffled each epoch
    again = PromptSampler(size=5, batch_size=3, seed=1)
    again.next_batch()
    state = again.state_dict()
    resumed = PromptSampler(size=5, batch_size=3, seed=1)
    resumed.load_state_dict(state)
    assert [resumed.next_batch() for _ in range(4)] == batches[1:]
