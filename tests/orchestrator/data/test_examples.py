"""Demonstrations and rankings: schemas, public formats, curation, the user split, and every bad
row named by source, row and field (or skipped and counted)."""

from __future__ import annotations

from pathlib import Path

import pytest
from testdata import write_jsonl

from instructray.orchestrator.config import load_config
from instructray.orchestrator.data import DataError, load_demonstrations, load_rankings

FIXTURES = Path(__file__).parents[2] / "fixtures"


def cfg_for(*overrides):
    return load_config(None, ["--data.eval_fraction=0", "--model.max_seq_len=64", *overrides])


GOOD = {"prompt": "Rank these.", "responses": ["a cat", "a dog", "the sea"], "ranking": [2, 0, 1]}


def test_rankings_and_pairs_tokenize_with_eos_and_keep_their_order(tmp_path, tok):
    rows = [GOOD, {"prompt": "Pick one.", "chosen": "yes", "rejected": "no"}]
    out = load_rankings(cfg_for(f"--data.rankings={write_jsonl(tmp_path / 'r.jsonl', rows)}"), tok)
    first, pair = out.train
    assert first.ranking == [[2], [0], [1]] and len(first.response_ids) == 3
    assert pair.ranking == [[0], [1]]
    assert all(r[-1] == tok.eos_token_id for r in first.response_ids + pair.response_ids)
    assert tok.decode(pair.response_ids[0][:-1]) == "yes"


def test_rankings_with_ties_keep_their_groups_and_all_tied_rows_are_counted_away(tmp_path, tok):
    rows = [
        {**GOOD, "ranking": [[2], [1, 0]]},  # 1 and 0 tie
        {**GOOD, "ranking": [1, [0, 2]]},  # a mix of both forms
        {**GOOD, "ranking": [[0, 1, 2]]},  # all tie: nothing to learn from it
    ]
    out = load_rankings(cfg_for(f"--data.rankings={write_jsonl(tmp_path / 'r.jsonl', rows)}"), tok)
    assert [e.ranking for e in out.train] == [[[2], [1, 0]], [[1], [0, 2]]]
    assert out.curation["all_tied"] == 1
    assert out.metrics()["data/curation/all_tied"] == 1


@pytest.mark.parametrize(
    ("row", "field", "message"),
    [
        ({**GOOD, "ranking": [0, 0, 1]}, "ranking", "[0, 0, 1]: index 0 appears twice"),
        ({**GOOD, "ranking": [0, 1]}, "ranking", "[0, 1]: index 2 is missing"),
        ({**GOOD, "ranking": [[0, 3], [1, 2]]}, "ranking", "index 3 is outside 0..2"),
        ({**GOOD, "ranking": [[0], [], [1, 2]]}, "ranking", "got [] in it"),
        ({**GOOD, "ranking": [0, [1, True]]}, "ranking", "each an int or a list of tied ints"),
        ({**GOOD, "ranking": "2,0,1"}, "ranking", "got str '2,0,1'"),
        ({**GOOD, "responses": ["only one"], "ranking": [0]}, "responses", "K = 1 responses"),
        (
            {**GOOD, "responses": [f"r{i}" for i in range(10)], "ranking": list(range(10))},
            "responses",
            "K = 10 responses; a ranking needs 2 to 9",
        ),
        (
            {**GOOD, "responses": ["a cat", "b", "a cat"]},
            "responses",
            "responses[2] is identical to responses[0]",
        ),
        (
            {**GOOD, "responses": ["a cat", " ", "b"]},
            "responses",
            "responses[1]: must be a non-empty string, got str ' '",
        ),
        ({**GOOD, "prompt": ""}, "prompt", "must be a non-empty string, got str ''"),
        ({"responses": GOOD["responses"], "ranking": [0, 1, 2]}, "prompt", "missing"),
        ({"prompt": "x", "ranking": [0, 1]}, "responses", "missing"),
        ({"prompt": "x", "responses": ["a", "b"]}, "ranking", "missing"),
        (
            {"prompt": "x", "chosen": "a", "rejected": ""},
            "rejected",
            "must be a non-empty string, got str ''",
        ),
        (
            {**GOOD, "responses": ["cat " * 80, "b", "c"]},
            "responses",
            "longer than model.max_seq_len = 64",
        ),
        ({**GOOD, "prompt": "cat " * 80}, "prompt", "longer than data.max_prompt_tokens"),
    ],
)
def test_each_bad_ranking_row_is_named(tmp_path, tok, row, field, message):
    path = write_jsonl(tmp_path / "r.jsonl", [GOOD, row])
    with pytest.raises(DataError) as e:
        load_rankings(cfg_for(f"--data.rankings={path}"), tok)
    text = str(e.value)
    assert text.startswith(f"{path}: line 2: field '{field}': ") and message in text, text
    assert "\n" not in text


def test_bad_rows_can_be_skipped_and_are_counted(tmp_path, tok):
    rows = [GOOD, {**GOOD, "ranking": [0, 0, 1]}, {**GOOD, "prompt": ""}, {**GOOD, "ranking": [5]}]
    path = write_jsonl(tmp_path / "r.jsonl", rows)
    out = load_rankings(cfg_for(f"--data.rankings={path}", "--data.on_bad_row=skip"), tok)
    assert len(out.train) == 1 and out.skipped == {"ranking": 2, "prompt": 1}
    assert out.metrics()["data/skipped/ranking"] == 2


@pytest.mark.parametrize(
    ("row", "field", "message"),
    [
        ({"prompt": "x"}, "response", "missing"),
        ({"prompt": "x", "response": ""}, "response", "must be a non-empty string, got str ''"),
        (
            {"messages": [{"role": "user", "content": "hi"}]},
            "messages",
            "must end with an assistant",
        ),
        (
            {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "a"}]},
            "messages",
            "messages[0]['content']: must be a non-empty string, got str ''",
        ),
        ({"prompt": "x", "response": "cat " * 80}, "response", "longer than model.max_seq_len"),
    ],
)
def test_each_bad_demonstration_row_is_named(tmp_path, tok, row, field, message):
    good = {"prompt": "Say hi.", "response": "hi"}
    path = write_jsonl(tmp_path / "d.jsonl", [good, row])
    with pytest.raises(DataError) as e:
        load_demonstrations(cfg_for(f"--data.demonstrations={path}"), tok)
    text = str(e.value)
    assert text.startswith(f"{path}: line 2: field '{field}': ") and message in text, text


def test_an_empty_or_missing_source_is_named(tmp_path, tok):
    path = write_jsonl(tmp_path / "d.jsonl", [])
    with pytest.raises(DataError, match=r"d\.jsonl: the file is empty \(no rows\)"):
        load_demonstrations(cfg_for(f"--data.demonstrations={path}"), tok)
    with pytest.raises(DataError, match="no such file"):
        load_demonstrations(cfg_for(f"--data.demonstrations={tmp_path / 'nope.jsonl'}"), tok)


def test_messages_demonstrations_train_on_the_last_assistant_turn(tmp_path, tok):
    row = {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "name a pet"},
            {"role": "assistant", "content": "a cat"},
        ]
    }
    path = write_jsonl(tmp_path / "d.jsonl", [row])
    [demo] = load_demonstrations(cfg_for(f"--data.demonstrations={path}"), tok).train
    assert tok.decode(demo.response_ids) == "a cat" + tok.eos_token
    prompt = tok.decode(demo.prompt_ids)
    assert "name a pet" in prompt and "hello" in prompt and "a cat" not in prompt


@pytest.mark.parametrize(("fmt", "count"), [("hh-rlhf", 5), ("oasst1", 3)])
def test_public_formats_load_as_rankings(tok, fmt, count):
    path = FIXTURES / f"{fmt.replace('-', '_')}_sample.jsonl"
    cfg = cfg_for(
        f"--data.rankings={path}",
        f"--data.rankings_format={fmt}",
        "--model.max_seq_len=512",
        "--data.max_prompt_tokens=400",
    )
    out = load_rankings(cfg, tok)
    assert len(out.train) == count
    flat = [sorted(i for g in e.ranking for i in g) for e in out.train]
    assert all(f == list(range(len(e.response_ids))) for f, e in zip(flat, out.train, strict=True))


def test_curation_and_user_split_apply_to_examples(tmp_path, tok):
    rows = [
        {"prompt": f"Say {w}.", "response": w, "user_id": f"u{i % 6}"}
        for i, w in enumerate("cat dog sun sea tree bird fish moon star rain snow wind".split())
    ]
    rows.append({"prompt": "Mail me at someone@example.org.", "response": "no", "user_id": "u0"})
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    cfg = cfg_for(
        f"--data.demonstrations={path}",
        "--data.eval_fraction=0.34",
        "--data.max_prompts_per_user=1",
    )
    out = load_demonstrations(cfg, tok)
    assert out.curation["pii"] == 0  # u0 was capped first (filters run in order)
    assert out.curation["per_user_cap"] == 7  # 6 users keep 1 row each of 13
    assert len(out.train) + len(out.eval) == 6 and out.eval and out.train


def test_cli_reports_a_bad_ranking_on_one_line_and_leaves_no_final(tmp_path, tiny_dir, capsys):
    from instructray.orchestrator.cli import main

    path = write_jsonl(tmp_path / "r.jsonl", [GOOD, {**GOOD, "ranking": [1, 1, 0]}])
    out = tmp_path / "run"
    code = main(
        ["rm", f"--model.tiny_dir={tiny_dir}", f"--data.rankings={path}", f"--run.output_dir={out}"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].endswith(
        f"{path}: line 2: field 'ranking': [1, 1, 0]: index 1 appears twice"
    )
    assert "Traceback" not in "\n".join(err) and not (out / "final").exists()
