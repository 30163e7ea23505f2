"""The config system: YAML + overrides onto dataclasses, clear errors, batch arithmetic."""

from __future__ import annotations

import dataclasses

import pytest

from instructray.orchestrator.config import (
    Config,
    ConfigError,
    dump_config,
    load_config,
    sections,
    validate_config,
)


def write(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_yaml_then_overrides_in_order(tmp_path):
    path = write(tmp_path, "rollout:\n  num_engines: 2\n  temperature: 0.5\nrun:\n  steps: 7\n")
    cfg = load_config(path, ["--run.steps=9", "--ppo.dual_clip=3", "--rollout.stop=[a, b]"])
    assert cfg.rollout.num_engines == 2
    assert cfg.rollout.temperature == 0.5
    assert cfg.run.steps == 9  # the override wins over the file
    assert cfg.ppo.dual_clip == 3.0 and isinstance(cfg.ppo.dual_clip, float)
    assert cfg.rollout.stop == ["a", "b"]
    assert cfg.learner.zero_stage == 2  # untouched default


def test_unknown_key_names_the_key_and_the_nearest(tmp_path):
    path = write(tmp_path, "rollout:\n  num_engine: 2\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == (
        f"{path}: unknown config key 'rollout.num_engine' (did you mean 'rollout.num_engines'?)"
    )
    with pytest.raises(ConfigError, match=r"'learner.zero_stag'.*'learner.zero_stage'"):
        load_config(None, ["--learner.zero_stag=3"])


def test_unknown_section_names_the_nearest(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config section 'rollouts'.*'rollout'"):
        load_config(write(tmp_path, "rollouts:\n  num_engines: 2\n"))


def test_wrong_type_names_field_value_and_expected_type():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["--rollout.num_engines=two"])
    assert "rollout.num_engines = 'two' is a str, expected int" in str(e.value)
    with pytest.raises(ConfigError, match=r"learner.offload = 3 is a int, expected bool"):
        load_config(None, ["--learner.offload=3"])
    with pytest.raises(ConfigError, match=r"ppo.kl_estimator = 'k4'.*'k1' \| 'k2' \| 'k3'"):
        load_config(None, ["--ppo.kl_estimator=k4"])
    with pytest.raises(ConfigError, match=r"run.steps = 2.5 is a float, expected int"):
        load_config(None, ["--run.steps=2.5"])


def test_int_is_accepted_for_float_and_null_for_optional():
    cfg = load_config(None, ["--ppo.kl_coef=1", "--ppo.value_clip=null"])
    assert cfg.ppo.kl_coef == 1.0 and cfg.ppo.value_clip is None


def test_bad_yaml_and_missing_file_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "run: [unclosed\n"))
    assert "not valid YAML" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("text", "key", "lines"),
    [
        # a second section would replace the first whole: the run writes to runs/default
        ("run:\n  output_dir: runs/a\nppo:\n  kl_coef: 0.1\nrun:\n  steps: 3\n", "run", (1, 5)),
        ("run:\n  steps: 3\n  name: a\n  steps: 4\n", "run.steps", (2, 4)),
        ("reward:\n  weights:\n    model: 1\n    model: 2\n", "reward.weights.model", (3, 4)),
    ],
    ids=["section", "key", "nested"],
)
def test_a_key_given_twice_is_one_line_naming_both_lines(tmp_path, text, key, lines):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == (
        f"{path}: key '{key}' is given twice, on line {lines[0]} and line {lines[1]} (YAML would "
        "keep only the second): keep one"
    )


def test_a_merged_key_may_be_overridden_and_loading_stays_safe(tmp_path):
    cfg = load_config(write(tmp_path, "run:\n  <<: {steps: 3, name: a}\n  steps: 4\n"))
    assert cfg.run.steps == 4 and cfg.run.name == "a"  # YAML's merge: the mapping's own wins
    with pytest.raises(ConfigError, match="not valid YAML.*python/object"):
        load_config(write(tmp_path, "run:\n  name: !!python/object/apply:os.getcwd []\n"))

    cfg = load_config(None, ["--rollout.num_engines=3", "--reward.clip=5"])
    dump_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_every_field_has_a_docstring():
    for cls in sections().values():
        for f in dataclasses.fields(cls):
            assert f.metadata.get("doc"), f"{cls.__name__}.{f.name} has no docstring"


def test_default_config_is_valid_for_every_stage():
    for stage in ("sft", "rm", "ppo", "pipeline", "eval", "demo", "bench"):
        validate_config(Config(), stage)


def test_validate_batch_arithmetic_carries_the_numbers():
    cfg = load_config(
        None,
        [
            "--rollout.prompts_per_step=6",
            "--rollout.samples_per_prompt=3",
            "--ppo.minibatch_size=4",
            "--learner.num_ranks=2",
            "--learner.micro_batch_size=4",
        ],
    )
    with pytest.raises(ConfigError) as e:
        validate_config(cfg, "ppo")
    assert "6 x 3 = 18 is not divisible by" in str(e.value)
    assert "= 4 x 2 = 8" in str(e.value)
    cfg.rollout.samples_per_prompt = 4  # 24 = 3 x 8
    validate_config(cfg, "ppo")


def test_old_values_from_training_needs_one_critic_step_per_batch():
    # 8 x 4 = 32 rows over 2 ranks: minibatches of 16 are one critic step, of 8 are two.
    base = ["--rollout.prompts_per_step=8", "--rollout.samples_per_prompt=4"]
    base += ["--learner.num_ranks=2", "--learner.micro_batch_size=4", "--ppo.old_values=train"]
    validate_config(load_config(None, [*base, "--ppo.minibatch_size=16"]), "ppo")
    with pytest.raises(ConfigError) as e:
        validate_config(load_config(None, [*base, "--ppo.minibatch_size=8"]), "ppo")
    assert "ppo.old_values = train needs one critic step per rollout batch" in str(e.value)
    assert "got 8 x 4 and 8 x 2" in str(e.value)
    with pytest.raises(ConfigError, match=r"ppo.ppo_epochs = 1 \(got 2\)"):
        validate_config(
            load_config(None, [*base, "--ppo.minibatch_size=16", "--ppo.ppo_epochs=2"]), "ppo"
        )


def test_old_logprobs_come_from_training_where_one_step_takes_the_batch_and_no_kl_reward():
    from instructray.orchestrator.config.checks import old_logprobs_in_train

    # 8 x 4 = 32 rows over 2 ranks: minibatches of 16 are one policy step, of 8 are two.
    base = ["--rollout.prompts_per_step=8", "--rollout.samples_per_prompt=4"]
    base += ["--learner.num_ranks=2", "--learner.micro_batch_size=4"]
    one, two = "--ppo.minibatch_size=16", "--ppo.minibatch_size=8"
    grpo = ["--ppo.estimator=grpo", "--ppo.kl_in_reward=false"]
    assert old_logprobs_in_train(load_config(None, [*base, one, *grpo]))  # auto
    assert not old_logprobs_in_train(load_config(None, [*base, two, *grpo]))  # two steps
    assert not old_logprobs_in_train(load_config(None, [*base, one, "--ppo.estimator=grpo"]))
    learner = ["--ppo.old_logprobs=learner"]
    assert not old_logprobs_in_train(load_config(None, [*base, one, *grpo, *learner]))
    train = "--ppo.old_logprobs=train"
    validate_config(load_config(None, [*base, one, *grpo, train]), "ppo")
    with pytest.raises(ConfigError, match="needs one policy step per rollout batch"):
        validate_config(load_config(None, [*base, two, *grpo, train]), "ppo")
    with pytest.raises(ConfigError, match=r"the rewards' KL \(ppo.kl_in_reward\) needs"):
        validate_config(load_config(None, [*base, one, "--ppo.estimator=grpo", train]), "ppo")


def test_validate_lists_every_problem_at_once():
    cfg = load_config(
        None,
        [
            "--learner.zero_stage=4",
            "--ppo.minibatch_size=6",
            "--learner.micro_batch_size=4",
            "--data.max_prompt_tokens=200",
            "--rollout.max_new_tokens=100",
            "--model.max_seq_len=256",
            "--rollout.num_engines=9",
            "--ppo.dual_clip=0.5",
            "--rollout.weight_sync=nccl",
        ],
    )
    with pytest.raises(ConfigError) as e:
        validate_config(cfg, "ppo")
    msg = str(e.value)
    assert "learner.zero_stage must be 0, 1, 2 or 3, got 4" in msg
    assert "ppo.minibatch_size = 6 is not divisible by learner.micro_batch_size = 4" in msg
    assert "200 + 100 = 300 exceeds model.max_seq_len = 256" in msg
    assert "rollout.num_engines = 9 exceeds rollout.prompts_per_step = 8" in msg
    assert "ppo.dual_clip must be > 1" in msg
    assert "rollout.weight_sync = nccl needs GPUs but learner.gpus_per_rank = 0" in msg


def test_ppo_arithmetic_is_not_checked_for_supervised_stages():
    cfg = load_config(None, ["--rollout.prompts_per_step=3", "--ppo.minibatch_size=8"])
    validate_config(cfg, "sft")
    with pytest.raises(ConfigError, match="not divisible"):
        validate_config(cfg, "ppo")


def test_shipped_configs_load_and_validate():
    from pathlib import Path

    configs = sorted(Path(__file__).parents[3].joinpath("deploy/configs").glob("*.yaml"))
    assert configs, "deploy/configs/ has no YAML"
    for path in configs:
        stage = "pipeline" if path.name.startswith("pipeline") else "ppo"
        validate_config(load_config(path), stage)


def test_yaml11_scientific_notation_is_a_float(tmp_path):
    cfg = load_config(write(tmp_path, "learner:\n  lr: 1e-4\n"))  # PyYAML reads 1e-4 as a str
    assert cfg.learner.lr == 1e-4
    with pytest.raises(ConfigError, match="expected float"):
        load_config(None, ["--learner.lr=fast"])


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo", "reinforce_pp_baseline"])
def test_group_estimators_need_two_samples_per_prompt(estimator):
    cfg = load_config(None, [f"--ppo.estimator={estimator}", "--rollout.samples_per_prompt=1"])
    with pytest.raises(ConfigError) as e:
        validate_config(cfg, "ppo")
    assert f"ppo.estimator = {estimator} takes each prompt's baseline" in str(e.value)
    assert "rollout.samples_per_prompt must be >= 2, got 1" in str(e.value)
    ok = load_config(None, ["--ppo.estimator=reinforce_pp", "--rollout.samples_per_prompt=1"])
    validate_config(ok, "ppo")  # the batch is its baseline: one sample per prompt is enough


def test_a_critic_free_estimator_has_no_critic_and_no_gae_in_the_learner():
    from instructray.orchestrator.config import needs_critic
    from instructray.orchestrator.config.checks import gae_in_learner

    gae = load_config(None, ["--ppo.old_values=train", "--ppo.minibatch_size=16"])
    grpo = load_config(None, ["--ppo.estimator=grpo", "--ppo.minibatch_size=16"])
    assert needs_critic(gae) and gae_in_learner(gae)
    assert not needs_critic(grpo) and not gae_in_learner(grpo)
    grpo.ppo.old_values = "train"
    with pytest.raises(ConfigError, match="ppo.estimator = grpo has no critic"):
        validate_config(grpo, "ppo")
