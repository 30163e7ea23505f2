"""reward.function as a list of rewards (`model` the reward model) and reward.weights."""

from __future__ import annotations

import pytest

from instructray.orchestrator.config import (
    ConfigError,
    load_config,
    reward_sources,
    uses_reward_model,
    validate_config,
)

BREVITY = "instructray.actors.scoring.rule_rewards:brevity"


def cfg_of(function: str, weights: str = "[]"):
    return load_config(None, [f"--reward.function={function}", f"--reward.weights={weights}"])


def test_entries_in_order_and_whether_the_reward_model_loads():
    cases = {
        "": (["model"], True),
        BREVITY: ([BREVITY], False),
        f"model, {BREVITY}": (["model", BREVITY], True),
        f"{BREVITY},instructray.actors.scoring.rule_rewards:count_target_word": (
            [BREVITY, "instructray.actors.scoring.rule_rewards:count_target_word"],
            False,
        ),
    }
    for function, (sources, loads_model) in cases.items():
        cfg = cfg_of(function)
        assert reward_sources(cfg) == sources, function
        assert uses_reward_model(cfg) is loads_model, function
    validate_config(cfg_of(f"model, {BREVITY}", "[1.0, -0.5]"), "ppo")
    validate_config(cfg_of("", "[2]"), "ppo")  # the reward model alone, scaled


@pytest.mark.parametrize(
    ("function", "weights", "message"),
    [
        ("os.getcwd", "[]", "reward.function entry 'os.getcwd' must be model (the reward model) "),
        (f"model, {BREVITY},", "[]", "reward.function entry '' must be model"),
        (f"model, {BREVITY}, model", "[]", "reward.function names 'model' more than once"),
        (f"{BREVITY}, {BREVITY}", "[]", f"reward.function names '{BREVITY}' more than once"),
        (f"{BREVITY}, other:brevity", "[]", "two entries have the function name 'brevity'"),
        (
            f"model, {BREVITY}",
            "[1.0]",
            "reward.weights has 1 weights for the 2 entries of reward.function",
        ),
        ("", "[1, 2]", "reward.weights has 2 weights for the 1 entries"),
        (f"model, {BREVITY}", "[1.0, .nan]", "reward.weights[1] must be a finite number, got nan"),
        (f"model, {BREVITY}", "[.inf, 1]", "reward.weights[0] must be a finite number, got inf"),
    ],
)
def test_bad_rewards_are_one_line_naming_the_entry(function, weights, message):
    with pytest.raises(ConfigError) as e:
        validate_config(cfg_of(function, weights), "ppo")
    assert message in str(e.value) and "\n" not in str(e.value)
