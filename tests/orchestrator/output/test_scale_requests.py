"""Scale requests through a run folder: written whole, each applied once, bad ones refused; and
the pool's bounds in the config (no Ray: the e2e tests run the pool itself)."""

from __future__ import annotations

import json

import pytest

from instructray.orchestrator.config import ConfigError, load_config, validate_config
from instructray.orchestrator.config.checks import max_engines
from instructray.orchestrator.jobs import scale
from instructray.orchestrator.output.scale_requests import SCALE_FILE, ScaleRequests


@pytest.fixture
def run_folder(tmp_path):
    (tmp_path / "config.yaml").write_text("run: {}\n")
    return tmp_path


def test_each_request_is_applied_once_and_the_newest_wins(run_folder):
    requests = ScaleRequests(run_folder)
    assert requests.poll() is None  # none yet
    assert "2 rollout engine(s)" in scale(run_folder, 2)
    assert requests.poll() == 2
    assert requests.poll() is None  # seen: not applied again (a dropped one is not retried)
    scale(run_folder, 2)  # the same number again is a new request
    assert requests.poll() == 2
    scale(run_folder, 1)
    assert requests.poll() == 1
    assert [p.name for p in run_folder.iterdir() if p.name.startswith(".")] == []  # no leftovers


def test_bad_requests_are_refused_or_ignored(run_folder, tmp_path_factory):
    with pytest.raises(ValueError, match="--engines must be a whole number >= 1, got 0"):
        scale(run_folder, 0)
    not_a_run = tmp_path_factory.mktemp("empty")
    with pytest.raises(FileNotFoundError, match="is not a run folder"):
        scale(not_a_run, 2)
    with pytest.raises(FileNotFoundError, match="neither a run folder nor a job id"):
        scale("no/such/folder", 2)
    requests = ScaleRequests(run_folder)
    (run_folder / SCALE_FILE).write_text(json.dumps({"engines": -3, "id": "x"}))
    assert requests.poll() is None
    (run_folder / SCALE_FILE).write_text("{half a line")
    assert requests.poll() is None  # a bad file is logged and left for the next write


def test_autoscale_bounds_are_checked():
    cfg = load_config(None, ["--rollout.autoscale=true", "--rollout.max_engines=4"])
    assert max_engines(validate_config(cfg, "ppo")) == 4
    assert max_engines(load_config(None, ["--rollout.max_engines=4"])) == 1  # autoscale off
    bad = load_config(None, ["--rollout.autoscale=true", "--rollout.min_engines=2"])
    with pytest.raises(ConfigError, match=r"min_engines <= rollout.num_engines <= .*2 <= 1 <= 1"):
        validate_config(bad, "ppo")
    many = load_config(None, ["--rollout.autoscale=true", "--rollout.max_engines=9"])
    with pytest.raises(ConfigError, match="rollout.max_engines = 9 exceeds rollout.prompts_per"):
        validate_config(many, "ppo")
