"""Bad input refused before anything runs (the table in docs/guides/checkpoints-and-faults.md).

Each case runs `instructray STAGE ...` in this process, as a user would, and asserts: exit code 2;
the error is the last line on stderr and names the key, file, line or field, the value seen and
what is expected; the stage itself never started (the pre-flight refused the input before Ray or
any actor); nothing was written where the run would write. No Ray, no actors: the table runs in
seconds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from testdata import PPO_TINY, write_jsonl

import instructray.orchestrator.cli as cli

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = ROOT / "deploy/configs/pipeline-tiny-cpu.yaml"


@pytest.fixture(scope="module")
def bad(tmp_path_factory, tiny_policy, tiny_reward) -> dict[str, str]:
    """Every bad file and folder of the table, made once: name -> path."""
    d = tmp_path_factory.mktemp("bad")
    paths: dict[str, str] = {"policy": tiny_policy, "reward": tiny_reward}

    def model(name: str, source: str, edit) -> None:
        folder = d / name
        shutil.copytree(source, folder)
        edit(folder)
        paths[name] = str(folder)

    model(
        "pickled", tiny_policy, lambda f: (f / "model.safetensors").rename(f / "pytorch_model.bin")
    )
    model("no_weights", tiny_policy, lambda f: (f / "model.safetensors").unlink())
    model("no_config", tiny_policy, lambda f: (f / "config.json").unlink())
    model("no_tokenizer", tiny_policy, lambda f: (f / "tokenizer.json").unlink())

    def two_labels(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        config["id2label"] = {"0": "bad", "1": "good"}
        (folder / "config.json").write_text(json.dumps(config))

    model("two_labels", tiny_reward, two_labels)

    def no_eos(folder: Path) -> None:  # pads with <|pad|>, but nothing ends an answer
        config = json.loads((folder / "tokenizer_config.json").read_text())
        config["eos_token"] = None
        (folder / "tokenizer_config.json").write_text(json.dumps(config))

    model("no_eos", tiny_policy, no_eos)
    rows = {
        "prompt_int": [{"prompt": "Tell me."}, {"prompt": 42}],
        "prompt_list": [{"prompt": ["tell", "me"]}],
        "messages_str": [{"prompt": "Tell me."}, {"messages": "a string"}],
        "messages_no_role": [{"messages": [{"content": "hi"}]}],
        "prompt_missing": [{"text": "Tell me."}],
        "prompt_long": [{"prompt": "the cat " * 200}],
        "demo_no_response": [{"prompt": "Tell me.", "response": "Yes."}, {"prompt": "Tell me."}],
        "ranking_not_perm": [{"prompt": "Tell me.", "responses": ["a", "b"], "ranking": [0, 0]}],
        "ranking_one": [{"prompt": "Tell me.", "responses": ["a"], "ranking": [0]}],
        "text_missing": [{"text": "the cat sat."}, {"prompt": "Tell me."}],
    }
    for name, content in rows.items():
        paths[name] = write_jsonl(d / f"{name}.jsonl", content)
    texts = {
        "empty.jsonl": "",
        "bad_json.jsonl": '{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c\n',
        "not_object.jsonl": '{"prompt": "a"}\n[1, 2]\n',
        "prompts.txt": "Tell me.\n",
        "empty.yaml": "",
        "list.yaml": "- a\n- b\n",
        "bad.yaml": "run: [unclosed\n",
        "a_file": "not a folder\n",
    }
    for name, text in texts.items():
        (d / name).write_text(text)
        paths[name.replace(".", "_")] = str(d / name)
    paths["folder"] = str(d)
    finished = d / "finished"
    (finished / "final").mkdir(parents=True)
    paths["finished"] = str(finished)
    return paths


# (id, stage, arguments, what the last line must say); {name} is a path of `bad`. Without a
# --config argument the case runs the tiny PPO config.
CASES = [
    # config values: range, finiteness, type, key
    ("kl_coef negative", "ppo", ["--ppo.kl_coef=-0.1"], ["ppo.kl_coef must be >= 0, got -0.1"]),
    (
        "kl_coef nan",
        "ppo",
        ["--ppo.kl_coef=.nan"],
        ["ppo.kl_coef must be a finite number, got nan"],
    ),
    ("lr negative", "ppo", ["--learner.lr=-1e-4"], ["learner.lr must be > 0, got -0.0001"]),
    ("critic_lr inf", "ppo", ["--learner.critic_lr=.inf"], ["learner.critic_lr", "finite"]),
    ("steps 0", "ppo", ["--run.steps=0"], ["run.steps must be >= 1", "got 0"]),
    ("top_p 1.5", "ppo", ["--rollout.top_p=1.5"], ["rollout.top_p must lie in (0, 1], got 1.5"]),
    ("gamma 2", "ppo", ["--ppo.gamma=2"], ["ppo.gamma must lie in [0, 1], got 2.0"]),
    ("temperature 0", "ppo", ["--rollout.temperature=0"], ["rollout.temperature must be > 0"]),
    ("eval_fraction 1", "sft", ["--data.eval_fraction=1"], ["data.eval_fraction", "in [0, 1)"]),
    ("sft lr 0", "sft", ["--sft.lr=0"], ["sft.lr must be > 0, got 0.0"]),
    ("rm epochs 0", "rm", ["--rm.epochs=0"], ["rm.epochs must be > 0, got 0"]),
    ("reward clip negative", "ppo", ["--reward.clip=-1"], ["reward.clip must be > 0 (or null)"]),
    ("engines two", "ppo", ["--rollout.num_engines=two"], ["rollout.num_engines = 'two'", "int"]),
    ("unknown key", "ppo", ["--ppo.kl_coeff=0.1"], ["'ppo.kl_coeff'", "'ppo.kl_coef'"]),
    ("batch arithmetic", "ppo", ["--ppo.minibatch_size=7"], ["not divisible", "= 7"]),
    # config files
    ("config missing", "ppo", ["--config", "{folder}/nope.yaml"], ["nope.yaml does not exist"]),
    ("config a folder", "ppo", ["--config", "{folder}"], ["is a folder, not a file"]),
    ("config not yaml", "ppo", ["--config", "{bad_yaml}"], ["bad.yaml: not valid YAML"]),
    ("config a list", "ppo", ["--config", "{list_yaml}"], ["list.yaml: expected a mapping"]),
    # model folders
    ("no such model", "ppo", ["--model.policy=/no/such/model"], ["model.policy: /no/such/model"]),
    (
        "tiny model name",
        "ppo",
        ["--model.policy=tiny://nosuch"],
        ["model.policy: unknown tiny model 'tiny://nosuch'", "tiny://policy"],
    ),
    ("pickled weights", "ppo", ["--model.policy={pickled}"], ["model.policy", "pytorch_model.bin"]),
    ("no weights", "sft", ["--model.policy={no_weights}"], ["model.policy", "has no weights"]),
    ("no config.json", "rm", ["--model.policy={no_config}"], ["model.policy", "no config.json"]),
    ("LM as reward", "ppo", ["--model.reward={policy}"], ["model.reward", "is a causal LM"]),
    ("two labels", "ppo", ["--model.reward={two_labels}"], ["model.reward", "2 labels"]),
    ("RM as policy", "ppo", ["--model.policy={reward}"], ["model.policy", "expected a causal LM"]),
    ("RM as ref", "ppo", ["--model.reference={reward}"], ["model.reference", "a causal LM"]),
    ("no tokenizer", "ppo", ["--model.tokenizer={no_tokenizer}"], ["model.tokenizer", "tokenizer"]),
    (
        "no EOS: sft",
        "sft",
        ["--model.tokenizer={no_eos}"],
        ["model.tokenizer: {no_eos}'s tokenizer has no EOS token", "set eos_token in its"],
    ),
    ("no EOS: rm", "rm", ["--model.tokenizer={no_eos}"], ["{no_eos}'s", "no EOS token"]),
    (
        "no EOS: pipeline",
        "pipeline",
        ["--config", str(PIPELINE), "--model.tokenizer={no_eos}"],
        ["{no_eos}'s tokenizer has no EOS token", "tokenizer_config.json"],
    ),
    # data files
    ("prompt int", "ppo", ["--data.prompts={prompt_int}"], ["prompt_int.jsonl", "2", "42"]),
    ("prompt list", "ppo", ["--data.prompts={prompt_list}"], ["prompt_list.jsonl", "1", "list"]),
    ("prompt missing", "ppo", ["--data.prompts={prompt_missing}"], ["prompt_missing", "prompt"]),
    ("messages str", "ppo", ["--data.prompts={messages_str}"], ["messages_str.jsonl", "messages"]),
    ("message role", "ppo", ["--data.prompts={messages_no_role}"], ["messages_no_role", "role"]),
    ("prompt long", "ppo", ["--data.prompts={prompt_long}"], ["prompt_long.jsonl", "longer than"]),
    ("empty file", "ppo", ["--data.prompts={empty_jsonl}"], ["empty.jsonl", "empty"]),
    ("bad json", "ppo", ["--data.prompts={bad_json_jsonl}"], ["bad_json.jsonl", "line 3", "JSON"]),
    ("not an object", "ppo", ["--data.prompts={not_object_jsonl}"], ["not_object.jsonl", "2"]),
    ("file type", "ppo", ["--data.prompts={prompts_txt}"], ["prompts.txt", ".txt", ".jsonl"]),
    ("no such file", "ppo", ["--data.prompts=./nope.jsonl"], ["nope.jsonl", "no such file"]),
    ("tiny data", "ppo", ["--data.prompts=tiny://nosuch"], ["tiny://nosuch", "tiny://prompts"]),
    ("response missing", "sft", ["--data.demonstrations={demo_no_response}"], ["2", "response"]),
    ("ranking repeat", "rm", ["--data.rankings={ranking_not_perm}"], ["ranking_not_perm", "1"]),
    ("ranking K=1", "rm", ["--data.rankings={ranking_one}"], ["ranking_one.jsonl", "K = 1"]),
    ("ptx, no text", "ppo", ["--ppo.ptx_coef=1"], ["ppo.ptx_coef = 1.0", "needs data.pretrain"]),
    (
        "ptx text missing",
        "ppo",
        ["--ppo.ptx_coef=1", "--data.pretrain={text_missing}"],
        ["text_missing.jsonl: line 2: field 'text': missing"],
    ),
    (
        "pipeline: bad PPO prompts before SFT",
        "pipeline",
        ["--config", str(PIPELINE), "--data.prompts={prompt_int}"],
        ["prompt_int.jsonl", "42"],
    ),
    # reward functions and labelers: imported and called once on one sample
    ("no module", "ppo", ["--reward.function=nosuch_xyz:f"], ["reward.function", "'nosuch_xyz'"]),
    ("no function", "ppo", ["--reward.function=os:nosuch"], ["reward.function", "'nosuch'"]),
    (
        "not callable",
        "ppo",
        ["--reward.function=rewards_for_tests:NOT_A_FUNCTION"],
        ["is not a function but int 3"],
    ),
    ("no colon", "ppo", ["--reward.function=os.getcwd"], ["reward.function", "module:function"]),
    (
        "one of several",
        "ppo",
        ["--reward.function=model, instructray.actors.scoring.rule_rewards:brevity, nosuch_xyz:f"],
        ["reward.function = 'nosuch_xyz:f'", "cannot import module 'nosuch_xyz'"],
    ),
    ("wrong signature", "ppo", ["--reward.function=os:getcwd"], ["0 positional", "fn(prompts"]),
    ("raises", "ppo", ["--reward.function=rewards_for_tests:broken"], ["KeyError", "lunch"]),
    (
        "returns strings",
        "ppo",
        ["--reward.function=rewards_for_tests:words"],
        ["returned a str ('good') for sample 0", "expected a number"],
    ),
    (
        "hangs",
        "ppo",
        ["--reward.function=rewards_for_tests:sleeps", "--run.timeout_s=0.5"],
        ["did not return within 0.5 s"],
    ),
    (
        "one score per batch",
        "ppo",
        ["--reward.function=rewards_for_tests:one_score"],
        ["'rewards_for_tests:one_score'", "returned 1 scores for 2 samples"],
    ),
    (
        "reward needs a missing column",
        "ppo",
        ["--reward.function=rewards_for_tests:needs_answer"],
        ["needs the column 'answer'", "they give: raw_prompts"],
    ),
    (
        "reward file missing",
        "ppo",
        ["--reward.function=/nonexistent/my_reward.py:f"],
        ["the file /nonexistent/my_reward.py does not exist"],
    ),
    (
        "GSM8K rows without data.prompt_field",
        "ppo",
        ["--data.prompts=tiny://gsm8k"],
        ["tiny://gsm8k: row 1: field 'prompt': missing"],
    ),
    (
        "reward.url not http",
        "ppo",
        ["--reward.url=ftp://judge"],
        ["reward.url must be an http:// or https:// address"],
    ),
    (
        "labeler repeats",
        "pipeline",
        [
            "--config",
            str(PIPELINE),
            "--data.rankings=",
            "--pipeline.labeler=rewards_for_tests:ranks_twice",
        ],
        ["pipeline.labeler", "[0, 0]", "each once"],
    ),
    # LoRA's targets against the policy's layers (built on the meta device, no weights)
    (
        "lora targets",
        "ppo",
        ["--learner.lora_rank=8", "--learner.lora_targets=[c_attn, c_fc]"],
        ["learner.lora_targets", "no linear layer of model.policy", "q_proj"],
    ),
    (
        "reference from the base without LoRA",
        "ppo",
        ["--reference.source=policy_base"],
        ["lora_rank > 0"],
    ),
    # the output folder
    ("output a file", "ppo", ["--run.output_dir={a_file}"], ["run.output_dir", "is a file"]),
    ("output finished", "ppo", ["--run.output_dir={finished}"], ["already holds a finished run"]),
]


@pytest.fixture()
def stage_started(monkeypatch) -> list[str]:
    """The stages whose runner was reached: none, for input the pre-flight refuses."""
    started: list[str] = []
    monkeypatch.setattr(cli, "resolve_runner", lambda stage: lambda cfg: started.append(stage))
    return started


def cli_args(config, tiny_dir, out, *more: str) -> list[str]:
    """A stage's arguments: a config, the session's tiny models, an output folder, more."""
    return [
        "--config",
        str(config),
        f"--model.tiny_dir={tiny_dir}",
        f"--run.output_dir={out}",
        *more,
    ]


def run(capsys, stage: str, args: list[str]) -> tuple[int, str]:
    code = cli.main([stage, *args])
    lines = capsys.readouterr().err.strip().splitlines()
    return code, lines[-1] if lines else ""


@pytest.mark.parametrize(
    ("stage", "args", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_one_line_before_anything_runs(
    bad, tiny_dir, tmp_path, capsys, stage_started, stage, args, expected
):
    args = [a.format(**bad) for a in args]
    config, args = (args[1], args[2:]) if args[0] == "--config" else (PPO_TINY, args)
    out = tmp_path / "run"
    code, last = run(capsys, stage, cli_args(config, tiny_dir, out, *args))
    assert code == 2, last
    assert last.startswith(f"instructray {stage}: error: "), last
    for text in expected:
        assert text.format(**bad) in last, last
    assert stage_started == []
    assert not (out / "final").exists() and not (out / "checkpoints").exists()


def test_the_table_has_forty_cases_and_good_input_passes(
    bad, tiny_dir, tmp_path, capsys, stage_started
):
    assert len(CASES) >= 40
    assert run(capsys, "ppo", cli_args(PPO_TINY, tiny_dir, tmp_path / "run"))[0] == 0
    assert stage_started == ["ppo"]  # the pre-flight passed the shipped config's own input


def test_eval_reads_a_finished_run_folder(bad, tiny_dir, capsys, stage_started):
    # The folder a finished run left is what `instructray eval` judges: not refused as output.
    assert run(capsys, "eval", cli_args(PPO_TINY, tiny_dir, bad["finished"]))[0] == 0
    assert stage_started == ["eval"]


NOWHERE = "http://127.0.0.1:9"  # nothing listens: a submission that got there would say so


def test_submit_runs_the_preflight_and_names_no_preflight_for_a_path_not_here(
    bad, tiny_dir, tmp_path, capsys
):
    # A data file this machine lacks may be on the cluster: the line says how to skip the check.
    args = cli_args(PPO_TINY, tiny_dir, tmp_path / "run", "--data.prompts=/cluster/p.jsonl")
    code, last = run(capsys, "submit", ["ppo", *args, "--address", NOWHERE])
    assert code == 2
    assert last == (
        "instructray submit: error: /cluster/p.jsonl: no such file or folder (/cluster/p.jsonl "
        "is not on this machine: if it is on the cluster, submit with --no-preflight)"
    )
    # A bad file that is here: the pre-flight's own line, no hint; the cluster never contacted.
    args = cli_args(PPO_TINY, tiny_dir, tmp_path / "run", f"--data.prompts={bad['prompt_int']}")
    code, last = run(capsys, "submit", ["ppo", *args, "--address", NOWHERE])
    assert code == 2 and "prompt_int.jsonl" in last and "42" in last, last
    assert "--no-preflight" not in last and "cannot reach" not in last
    # Skipped: the submission goes on to the cluster, which is not there.
    args = cli_args(PPO_TINY, tiny_dir, tmp_path / "run", "--data.prompts=/cluster/p.jsonl")
    code, last = run(capsys, "submit", ["ppo", *args, "--address", NOWHERE, "--no-preflight"])
    assert code == 2 and f"cannot reach the Ray job API at {NOWHERE}" in last, last


def test_an_empty_config_file_is_one_warning(bad, tiny_dir, tmp_path, caplog, stage_started):
    code = cli.main(["ppo", *cli_args(bad["empty_yaml"], tiny_dir, tmp_path)])
    assert code == 0 and stage_started == ["ppo"]
    assert (
        f"config file {bad['empty_yaml']} is empty: every setting keeps its default" in caplog.text
    )


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(
    tiny_dir, tmp_path, capsys, monkeypatch
):
    def fails(cfg):
        raise RuntimeError("something\nbroke")

    monkeypatch.setattr(cli, "resolve_runner", lambda stage: fails)
    args = cli_args(PPO_TINY, tiny_dir, tmp_path)
    code, last = run(capsys, "ppo", args)
    assert code == 2
    assert last == (
        "instructray ppo: error: RuntimeError: something broke (--run.log_level=debug shows where)"
    )
    with pytest.raises(RuntimeError, match="something"):
        cli.main(["ppo", *args, "--run.log_level=debug"])
