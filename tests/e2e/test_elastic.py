"""The elastic engine pool, by hand, and generation pipelined with training, in one run:
`instructray scale` on a run folder grows a running PPO run from 1 to 2 engines and back, each
join verified before the engine serves; a request the cluster cannot place within
run.start_timeout_s is dropped with a warning and the run goes on; the engines draw each next
step's samples while the learner trains (rollout.max_staleness 1), one weight version behind.
Real Ray, vLLM, DeepSpeed; tiny models."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pytest
from testdata import every_sync_close, metrics_of, ppo_tiny_config, rows_so_far, wait_for

from instructray.orchestrator.cli import main
from instructray.orchestrator.jobs import scale
from instructray.orchestrator.ppo.run import run_ppo

pytestmark = pytest.mark.e2e
STEPS = 140  # ~0.3-0.6 s each: an engine starts and joins (step 64 seen, quiet), then leaves


class Conductor(threading.Thread):
    """Scales the run as it goes, by what its metrics show; keeps what it saw."""

    def __init__(self, out: Path):
        super().__init__(daemon=True)
        self.out, self.seen, self.error = out, {}, None

    def run(self) -> None:
        out, deadline = self.out, time.monotonic() + 500
        try:
            wait_for("the first step", lambda: rows_so_far(out), deadline)
            print(scale(out, 2))  # the Python face
            two = wait_for(
                "a second engine",
                lambda: [r for r in rows_so_far(out) if r["rollout/engines"] == 2][1:],
                deadline,
            )
            self.seen["placement_at_2"] = json.loads((out / "placement.json").read_text())
            assert main(["scale", str(out), "--engines", "1"]) == 0  # the CLI
            wait_for(
                "1 engine again",
                lambda: (
                    [r for r in rows_so_far(out) if r["step"] > two[0]["step"]]
                    and [r for r in rows_so_far(out) if r["rollout/engine_leaves"] == 1]
                ),
                deadline,
            )
            self.seen["done_at"] = rows_so_far(out)[-1]["step"]
        except BaseException as e:  # the test reports it
            self.error = e


@pytest.fixture(scope="module")
def scaled_run(ray_local, tiny_dir, tiny_policy, tiny_reward, tmp_path_factory, caplog_module):
    out = tmp_path_factory.mktemp("elastic") / "run"
    cfg = ppo_tiny_config(
        tiny_dir,
        out,
        "--reward.function=instructray.actors.scoring.rule_rewards:count_target_word",
        f"--run.steps={STEPS}",
        "--learner.lr=1.0e-4",
        "--ppo.kl_coef=0.01",
        "--rollout.max_staleness=1",
    )
    conductor = Conductor(out)
    conductor.start()
    run_ppo(cfg)
    conductor.join(timeout=30)
    return out, conductor, caplog_module


@pytest.fixture(scope="module")
def caplog_module():
    """Warnings of the run, kept for the module's tests."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    logger = logging.getLogger("instructray.orchestrator.ppo.pool")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)


def test_scale_grows_and_shrinks_the_pool_mid_run(scaled_run):
    out, conductor, _ = scaled_run
    assert conductor.error is None, repr(conductor.error)
    rows = metrics_of(out)
    engines = [r["rollout/engines"] for r in rows]
    # 1 -> 2 -> 1, and the run finished every step.
    assert engines[0] == 1 and 2 in engines and engines[-1] == 1
    first_two = engines.index(2)
    assert all(e == 1 for e in engines[:first_two])
    assert rows[-1]["rollout/engine_joins"] == 1 and rows[-1]["rollout/engine_leaves"] == 1
    assert [r["step"] for r in rows] == list(range(STEPS))
    # The joined engine had a group of its own and served: its tokens/s were logged.
    assert len(conductor.seen["placement_at_2"]["rollout"]) == 2
    assert any("throughput/engine_1/tokens_per_s" in r for r in rows)
    assert all("throughput/engine_1/tokens_per_s" not in r for r in rows[:first_two])
    final = json.loads((out / "placement.json").read_text())
    assert len(final["rollout"]) == 1


def test_every_sync_is_verified_and_the_reward_rises(scaled_run):
    out, _, _ = scaled_run
    rows = metrics_of(out)
    assert every_sync_close(out)
    assert [r["weight_sync/version"] for r in rows] == list(range(1, len(rows) + 1))
    first, last = rows[:10], rows[-10:]
    mean = lambda rs: sum(r["reward/mean"] for r in rs) / len(rs)  # noqa: E731
    assert mean(last) > mean(first) + 0.4, (mean(first), mean(last))


def test_a_join_is_logged_with_its_verified_sync(scaled_run):
    _, conductor, records = scaled_run
    assert conductor.error is None, repr(conductor.error)
    joined = [r.getMessage() for r in records if "joined on node" in r.getMessage()]
    assert len(joined) == 1 and "max log-prob diff" in joined[0]


def test_a_request_that_cannot_be_placed_is_dropped_with_a_warning(ray_local, caplog):
    """The pool alone (real placement groups, no engine starts): an engine no node can hold is
    waited for run.start_timeout_s, then dropped with a warning; the pool asks for no more."""
    from types import SimpleNamespace

    from instructray.orchestrator.cluster import Placement
    from instructray.orchestrator.config import load_config
    from instructray.orchestrator.ppo.pool import EnginePool

    cfg = load_config(None, ["--rollout.cpus_per_engine=64", "--run.start_timeout_s=2"])
    placement = Placement.__new__(Placement)  # no actors of its own: only the joiner's group
    placement.groups, placement.slots = [], {"rollout": []}
    roles = SimpleNamespace(engines=[], placement=placement)
    pool = EnginePool(cfg, roles, weights=None)
    pool.target = 1
    caplog.set_level(logging.INFO, "instructray.orchestrator.ppo.pool")
    pool.apply()
    assert len(pool.joining) == 1 and len(placement.groups) == 1
    time.sleep(2.5)
    pool.apply()  # the run goes on: nothing raised, nothing waits
    assert pool.joining == [] and placement.groups == [] and pool.target == 0
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "rollout engine 0 dropped: not placed within run.start_timeout_s = 2 s" in warning
    pool.apply()
    assert pool.joining == []  # not tried again until a new request


def test_samples_are_drawn_one_version_behind_and_weighted_for_it(scaled_run):
    out, _, _ = scaled_run
    rows = metrics_of(out)
    # Step 0 trains on samples of the weights it holds; every later step on samples its engines
    # drew while the learner trained the step before: exactly one version behind, never more.
    assert rows[0]["rollout/staleness/max"] == 0
    assert all(r["rollout/staleness/mean"] == r["rollout/staleness/max"] == 1 for r in rows[1:])
    # The learner's log-probs anchor the clip; the engines' (a version behind) are weighted by
    # truncated importance (ppo.tis_cap 2): the gap and the share of tokens capped are logged.
    assert all(r["rollout/logprob_diff/max"] > 0 for r in rows[1:])
    assert all(0 <= r["rollout/tis/clipfrac"] < 0.5 for r in rows)
    # While the learner trains, the engines generate: the generate phase only waits for them.
    for role in ("rollout", "learner", "reward", "reference"):
        assert all(0 <= r[f"timing/idle/{role}"] <= r["timing/step"] for r in rows)
