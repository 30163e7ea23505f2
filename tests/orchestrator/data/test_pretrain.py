"""PPO-ptx's pretraining text: {text} rows, tokenized whole with EOS, cut to the context."""

from __future__ import annotations

import pytest
from testdata import write_jsonl

from instructray.orchestrator.data import DataError, load_pretrain, tokenize_text


def test_tiny_pretrain_texts_end_with_eos_and_fit_the_context(tok):
    texts = load_pretrain("tiny://pretrain", tok, max_tokens=64)
    assert len(texts) == 256 and all(ids[-1] == tok.eos_token_id for ids in texts)
    assert all(len(ids) >= 2 for ids in texts)
    short = load_pretrain("tiny://pretrain", tok, max_tokens=3)
    assert all(len(ids) == 3 for ids in short)
    assert short[0] == texts[0][:3]


def test_a_text_is_tokenized_as_the_run_reads_it(tok):
    ids = tokenize_text("the cat sat.", tok, 100)
    assert ids == tok("the cat sat.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def test_a_bad_row_is_named_or_skipped(tmp_path, tok):
    path = write_jsonl(tmp_path / "p.jsonl", [{"text": "the cat."}, {"text": 3}, {"text": " "}])
    with pytest.raises(DataError, match=r"p.jsonl: line 2: field 'text': .*int 3"):
        load_pretrain(path, tok, 32)
    assert len(load_pretrain(path, tok, 32, on_bad_row="skip")) == 1
    with pytest.raises(DataError, match="data.pretrain is empty"):
        load_pretrain("", tok, 32)
