"""Faults survived inside one PPO run (real Ray, vLLM, DeepSpeed): rollout, reward and reference
actors crash inside their calls or are killed in each phase of a step; Ray restarts them, a
restarted engine gets the current weights before it serves, the interrupted work is redone, and
the run ends with exactly the weights of a run without faults."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from testdata import every_sync_close, metrics_of, ppo_tiny_config

from instructray.actors.faults import ENV
from instructray.actors.remote import RemoteError
from instructray.orchestrator.config import load_config
from instructray.orchestrator.ppo.run import run_ppo

pytestmark = pytest.mark.e2e
STEPS = 20  # the config's own run.steps
# Every role x every phase: crashes inside a call (ROLE:METHOD:N) and kills by the driver as a
# step enters a phase (kill:ROLE:PHASE:STEP), one fault per step from step 1 on.
FAULTS = [
    "rollout:generate:2",
    "reward:score:2",
    "reference:score:2",
    "rollout:sync:2",
    "kill:rollout:score:5",
    "kill:rollout:train:6",
    "kill:rollout:generate:7",
    "kill:reward:generate:8",
    "kill:reward:train:9",
    "kill:reward:sync:10",
    "kill:reference:generate:11",
    "kill:reference:train:12",
    "kill:reference:sync:13",
]

# Pipelined, an engine's generate call is in flight while the learner trains: one crashes in it,
# one is killed then, one as the step that takes its samples begins.
ENGINE_FAULTS = ["rollout:generate:2", "kill:rollout:train:6", "kill:rollout:generate:7"]


def config(tiny_dir, out: Path, *overrides: str):
    # bf16, the precision of GPU runs: faults must change nothing in it either (fp32 is tested
    # by the other PPO runs). Without overrides: `instructray ppo --config ppo-tiny-cpu.yaml
    # --model.dtype=bfloat16`.
    return ppo_tiny_config(tiny_dir, out, "--model.dtype=bfloat16", *overrides)


@pytest.fixture(scope="module")
def runs(ray_local, tiny_dir, tiny_policy, tiny_reward, tmp_path_factory):
    base = tmp_path_factory.mktemp("faults")
    clean, faulty = base / "clean", base / "faulty"
    run_ppo(config(tiny_dir, clean))
    markers = base / "markers"
    markers.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV, ",".join(FAULTS) + f"@{markers}")
        run_ppo(config(tiny_dir, faulty, f"--run.max_actor_restarts={len(FAULTS)}"))
    return clean, faulty, markers


@pytest.fixture(scope="module")
def pipelined(ray_local, tiny_dir, tiny_policy, tiny_reward, tmp_path_factory):
    """Engine faults with generation pipelined with training (rollout.max_staleness 1); the
    scorers' faults meet the same calls as in lockstep."""
    out = tmp_path_factory.mktemp("faults-pipelined") / "run"
    markers = out.parent / "markers"
    markers.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV, ",".join(ENGINE_FAULTS) + f"@{markers}")
        restarts = f"--run.max_actor_restarts={len(ENGINE_FAULTS)}"
        run_ppo(config(tiny_dir, out, restarts, "--rollout.max_staleness=1", "--run.steps=8"))
    return out, markers


def test_the_configs_bf16_run_verifies_every_sync_and_its_reward_rises(runs):
    clean, _, _ = runs
    cfg = load_config(clean / "config.yaml")
    assert (cfg.model.dtype, cfg.run.steps, cfg.reward.function) == ("bfloat16", STEPS, "")
    rows = metrics_of(clean)
    assert [r["step"] for r in rows] == list(range(STEPS))
    assert [r["weight_sync/version"] for r in rows] == list(range(1, STEPS + 1))
    assert every_sync_close(clean)  # bits of every tensor checked, log-probs within bf16's
    # The reward model's score, its mean over the last 10 steps against the first 10 (each
    # step's mean varies by ~0.05 with its prompts; seen: 0.037 -> 0.088).
    scores = [r["reward/mean"] for r in rows]
    assert sum(scores[10:]) > sum(scores[:10]), scores


def test_every_fault_fired_and_the_run_finished_its_steps(runs):
    _, faulty, markers = runs
    assert len(list(markers.iterdir())) == len(FAULTS)
    rows = metrics_of(faulty)
    assert [r["step"] for r in rows] == list(range(STEPS))
    assert rows[-1]["actor_restarts"] == len(FAULTS)  # as Ray's GCS counts them
    assert every_sync_close(faulty)


def test_pipelined_the_run_survives_every_fault_and_trains_on_no_older_samples(pipelined):
    out, markers = pipelined
    assert len(list(markers.iterdir())) == len(ENGINE_FAULTS)
    rows = metrics_of(out)
    assert [r["step"] for r in rows] == list(range(8))
    assert rows[-1]["actor_restarts"] == len(ENGINE_FAULTS) and every_sync_close(out)
    # A part redone by a restarted engine is drawn under the newer weights it was brought to:
    # fresher, never older. (So here faults change the samples, unlike in lockstep.)
    assert all(r["rollout/staleness/max"] <= 1 for r in rows)
    assert sum(r["rollout/staleness/mean"] < 1 for r in rows[1:]) >= 1


def test_faults_change_nothing_in_the_result(runs):
    clean, faulty, _ = runs
    a = load_file(str(clean / "final" / "model.safetensors"))
    b = load_file(str(faulty / "final" / "model.safetensors"))
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6, rtol=0), name
    for x, y in zip(metrics_of(clean), metrics_of(faulty), strict=True):
        assert y["reward/mean"] == pytest.approx(x["reward/mean"], abs=1e-6)


def test_past_the_restart_bound_the_run_stops_with_a_checkpoint_it_resumes_from(
    runs, tiny_dir, tmp_path, monkeypatch
):
    clean, _, _ = runs
    run = tmp_path / "run"

    def stopped_by(fault: str, actor: str, checkpoint: int, *overrides: str) -> None:
        markers = tmp_path / f"markers-{checkpoint}"
        markers.mkdir()
        monkeypatch.setenv(ENV, f"{fault}@{markers}")
        cfg = config(tiny_dir, run, "--run.max_actor_restarts=0", "--run.steps=3", *overrides)
        with pytest.raises(
            RemoteError,
            match=rf"{actor} .*run\.max_actor_restarts = 0.*checkpoint .*step-{checkpoint:06d}; "
            r"continue with --run\.resume=auto",
        ):
            run_ppo(cfg)
        assert not (run / "final").exists()
        assert [r["step"] for r in metrics_of(run)] == list(range(checkpoint))

    # Step 1's scoring, before the learner trains: a checkpoint of the step's start.
    stopped_by("reward:score:2", "reward 0", 1)
    # Resumed (the new engine's 1st weight update is the resume's), step 1 trains and its sync
    # (the 2nd update) fails for good: only the sync was left, so the step counts.
    stopped_by("rollout:sync:2", "rollout engine 0", 2, "--run.resume=auto")
    monkeypatch.delenv(ENV)
    run_ppo(config(tiny_dir, run, "--run.steps=3", "--run.resume=auto"))
    rows, want = metrics_of(run), metrics_of(clean)[:3]
    assert [r["step"] for r in rows] == [0, 1, 2]
    for x, y in zip(want, rows, strict=True):  # as if nothing had happened
        assert y["reward/mean"] == pytest.approx(x["reward/mean"], abs=1e-6)
        assert y["kl/mean"] == pytest.approx(x["kl/mean"], abs=1e-6)


def test_a_learner_rank_that_dies_stops_the_run_naming_it(
    ray_local, tiny_dir, tmp_path, monkeypatch
):
    (tmp_path / "markers").mkdir()
    monkeypatch.setenv(ENV, f"kill:learner:train:1@{tmp_path / 'markers'}")
    cfg = config(tiny_dir, tmp_path / "run", "--run.steps=3")
    with pytest.raises(RemoteError, match=r"learner train: rank 0 died.*set run\.save_every"):
        run_ppo(cfg)
    assert not (tmp_path / "run" / "final").exists()


# One run over the broadcast transport (weight_sync = gloo: every restart forms the weight group
# again, learner rank 0 and every engine, and a broken broadcast is redone) with a checkpoint at
# every step: the learner killed in each phase is rebuilt from its checkpoint, rank 0 (the
# group's sender) included as it syncs, and engines crash or die mid-broadcast.
LEARNER_AND_BROADCAST_FAULTS = [
    "rollout:generate:2",  # the engine crashes inside generate (step 1)
    "kill:learner:generate:3",
    "kill:rollout:sync:4",  # killed as step 4 enters sync: the broadcast breaks
    "kill:learner:score:5",
    "kill:learner:train:8",
    "kill:learner:sync:11",  # learner rank 0, the broadcast's sender, killed as step 11 syncs
]


def test_a_learner_killed_in_each_phase_is_rebuilt_and_broadcast_syncs_survive_deaths(
    runs, tiny_dir, tmp_path, monkeypatch
):
    clean, _, _ = runs
    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setenv(ENV, ",".join(LEARNER_AND_BROADCAST_FAULTS) + f"@{markers}")
    out = tmp_path / "run"
    run_ppo(
        config(
            tiny_dir,
            out,
            "--rollout.weight_sync=gloo",
            "--run.save_every=1",
            f"--run.max_actor_restarts={len(LEARNER_AND_BROADCAST_FAULTS)}",
        )
    )
    assert len(list(markers.iterdir())) == len(LEARNER_AND_BROADCAST_FAULTS)
    rows = metrics_of(out)
    assert [r["step"] for r in rows] == list(range(STEPS))  # redone steps replace their rows
    assert rows[-1]["actor_restarts"] == 2 and rows[-1]["learner_rebuilds"] == 4
    assert every_sync_close(out)
    a = load_file(str(clean / "final" / "model.safetensors"))
    b = load_file(str(out / "final" / "model.safetensors"))
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6, rtol=0), name


def test_a_hung_weight_sync_fails_within_its_timeout_naming_the_engine(
    ray_local, tiny_dir, tmp_path, monkeypatch
):
    (tmp_path / "markers").mkdir()
    monkeypatch.setenv(ENV, f"hang:rollout:sync:2@{tmp_path / 'markers'}")  # step 1's sync
    cfg = config(tiny_dir, tmp_path / "run", "--run.steps=3", "--run.timeout_s=10")
    with pytest.raises(
        RemoteError, match=r"weight sync: rollout engine 0 did not answer within 10 s"
    ):
        run_ppo(cfg)
    assert [r["step"] for r in metrics_of(tmp_path / "run")] == [0]
    assert not (tmp_path / "run" / "final").exists()
