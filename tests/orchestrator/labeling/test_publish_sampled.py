"""`instructray label publish --prompts FILE --model DIR --k K`: a labeling round outside a
pipeline. A rollout engine (vLLM on Ray) samples K answers per prompt from the model; the tasks
carry the prompt's author (who may not rank them) and the sampling's provenance."""

import json

import pytest

from instructray.orchestrator.labeling.commands import main
from instructray.orchestrator.labeling.store import Store


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": f"Tell me about the number {i}.", "user_id": f"u{i}"} for i in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_publish_samples_k_answers_per_prompt_with_their_provenance(
    ray_local, tiny_policy, prompts, tmp_path, capsys
):
    db = tmp_path / "labels.db"
    args = ["publish", f"--db={db}", f"--prompts={prompts}", f"--model={tiny_policy}", "--k=3"]
    assert main([*args, "--rollout.temperature=1.0", "--rollout.max_new_tokens=8"]) == 0
    assert "published 3 tasks" in capsys.readouterr().out
    store = Store(f"sqlite:///{db}")
    try:
        assert store.status()["tasks"] == 3
        author = store.labeler(store.add_labeler("u0"))  # wrote prompt 0: never gets it
        seen = []
        while (task := store.next_task(author)) is not None:
            assert len(task.answers) == 3 and len({a["text"] for a in task.answers}) == 3
            seen.append(task.prompt)
            store.submit(author, task.task_id, {"ranking": [[a["id"]] for a in task.answers]})
        rows = store.export()
    finally:
        store.close()
    assert sorted(seen) == [f"Tell me about the number {i}." for i in (1, 2)]
    assert len(rows) == 2 and all(len(r["responses"]) == 3 for r in rows)
    provenance = {json.dumps({**r["provenance"], "responses": None}, sort_keys=True) for r in rows}
    assert [json.loads(p) for p in provenance] == [
        {
            "max_new_tokens": 8,
            "model": str(tiny_policy),
            "seed": 0,
            "temperature": 1.0,
            "responses": None,
        }
    ]


def test_publish_refuses_a_folder_that_is_no_model_and_a_flag_of_no_mode(prompts, tmp_path, capsys):
    db = tmp_path / "labels.db"
    assert main(["publish", f"--db={db}", f"--prompts={prompts}", f"--model={tmp_path}"]) == 2
    assert f"--model: {tmp_path} is not a model folder" in capsys.readouterr().err
    answers = tmp_path / "a.jsonl"
    answers.write_text("")
    with pytest.raises(SystemExit):
        main(["publish", f"--db={db}", f"--answers={answers}", "--rollout.temperature=1"])
    assert "unrecognized arguments: --rollout.temperature=1" in capsys.readouterr().err
