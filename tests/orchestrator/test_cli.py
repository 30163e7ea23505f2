"""The `instructray` command line: help, overrides, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from instructray.orchestrator.cli import main
from instructray.orchestrator.config import load_config
from instructray.orchestrator.config.precision import resolve_precision


def test_help_lists_every_field_with_doc_and_default(capsys):
    with pytest.raises(SystemExit) as e:
        main(["ppo", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--rollout.num_engines=1  [int, > 0]" in out
    assert "Number of vLLM engines; prompts are shared among them." in out
    assert "--learner.zero_stage=2  [int]" in out
    assert "--ppo.dual_clip=null  [float | null, > 1]" in out
    assert "DESIGN.md" not in out  # a file the repository does not ship


def test_print_config_applies_both_override_forms(capsys):
    assert main(["ppo", "--print-config", "--run.steps=3", "--rollout.num_engines", "2"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["run"]["steps"] == 3 and cfg["rollout"]["num_engines"] == 2


def test_misspelled_key_is_a_one_line_error(capsys):
    assert main(["ppo", "--rollout.num_engine=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "instructray ppo: error: override --rollout.num_engine: unknown config key "
        "'rollout.num_engine' (did you mean 'rollout.num_engines'?)"
    )


def test_a_config_file_without_config_asks_did_you_mean(tmp_path, capsys):
    existing = tmp_path / "my.cfg"  # a file that is here, whatever its name
    existing.write_text("run:\n  steps: 2\n")
    for stage, arg in (("ppo", "my.yaml"), ("sft", "configs/a.yml"), ("ppo", str(existing))):
        assert main([stage, "--print-config", arg]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (
            f"instructray {stage}: error: unexpected argument '{arg}': did you mean --config {arg}?"
        )
    assert main(["submit", "ppo", "my.yaml"]) == 2  # before anything reaches a cluster
    assert capsys.readouterr().err.strip().endswith("did you mean --config my.yaml?")
    assert main(["ppo", "--print-config", "steps=2"]) == 2  # not a file: the usual form
    assert "must look like --section.key=value" in capsys.readouterr().err


def test_invalid_arithmetic_fails_before_anything_starts(capsys):
    assert main(["ppo", "--print-config", "--ppo.minibatch_size=5"]) == 2
    assert "not divisible" in capsys.readouterr().err


def test_console_script_is_installed():
    out = subprocess.run(
        [sys.executable, "-m", "instructray.orchestrator.cli", "ppo", "--print-config"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert yaml.safe_load(out)["learner"]["zero_stage"] == 2


def test_demo_with_no_config_is_the_shipped_demo(tmp_path, capsys):
    shipped = load_config(Path(__file__).parents[2] / "deploy" / "configs" / "demo-tiny-cpu.yaml")
    resolve_precision(shipped)
    assert main(["demo", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == shipped.to_dict()
    # A --config still wins where it speaks, and overrides win over both; the rest is the demo's.
    mine = tmp_path / "mine.yaml"
    mine.write_text("run:\n  steps: 3\nrm:\n  epochs: 1\n")
    assert main(["demo", "--config", str(mine), "--print-config", "--run.seed=5"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert (cfg["run"]["steps"], cfg["rm"]["epochs"], cfg["run"]["seed"]) == (3, 1, 5)
    assert cfg["rm"]["lr"] == shipped.rm.lr and cfg["pipeline"] == shipped.to_dict()["pipeline"]
    # Other stages keep the general defaults.
    assert main(["ppo", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["rm"]["lr"] != shipped.rm.lr


def test_every_stage_the_checks_know_has_a_runner():
    from instructray.orchestrator import cli
    from instructray.orchestrator.config import STAGES

    assert list(cli.STAGES) == list(STAGES)
    for stage in STAGES:
        assert callable(cli.resolve_runner(stage)), stage


def test_bench_plan_prints_the_table_without_the_configs_inputs(capsys):
    # The 7B config's model and data folders are not on this machine: --plan reads none of them.
    config = Path(__file__).parents[2] / "deploy" / "configs" / "pipeline-7b-8gpu.yaml"
    assert main(["bench", "--plan", "--config", str(config), "--rollout.max_new_tokens=256"]) == 0
    out = capsys.readouterr().out
    assert "(1024 prompt + 256 new) tokens" in out and "N = 7e+09" in out
    assert out.count("  pipelined = max(") == 3
    assert main(["bench", "--plan", "--config", str(config), "--plan-params=7.6e9"]) == 0
    assert "N = 7.6e+09" in capsys.readouterr().out
