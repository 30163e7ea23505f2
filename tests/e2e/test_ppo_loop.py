"""The distributed PPO loop, end to end: real Ray, real vLLM (CPU build), real DeepSpeed (gloo),
tiny models. No component is mocked."""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

import pytest
import torch
from reward_server import reward_server
from safetensors.torch import load_file, save
from testdata import PPO_TINY, metrics_of, ppo_tiny_config

from instructray.actors.remote import RemoteError
from instructray.orchestrator.cli import main
from instructray.orchestrator.config import load_config
from instructray.orchestrator.ppo.roles import Roles
from instructray.orchestrator.ppo.run import run_ppo
from instructray.orchestrator.ppo.trainer import PPOTrainer

CONFIG = PPO_TINY
TOKEN_ENV = "INSTRUCTRAY_REWARD_TOKEN"  # reward.url_token_env's default
pytestmark = pytest.mark.e2e


config = ppo_tiny_config


@pytest.fixture(scope="module")
def zero2_run_and_calls(ray_local, tiny_dir, tiny_policy, tmp_path_factory):
    """The tiny PPO config in bf16 (every role): 2 ranks under ZeRO-2, 1 engine, a reward and a
    reference actor; a rule reward served by a remote endpoint (reward.url, on loopback, with a
    bearer token from the environment). (fp32 runs: the checkpoint, numerics and fault tests.)"""
    out = tmp_path_factory.mktemp("ppo-zero2")
    token = "token-" + out.name
    with reward_server(token) as server, mock.patch.dict(os.environ, {TOKEN_ENV: token}):
        cfg = config(
            tiny_dir,
            out,
            "--model.dtype=bfloat16",
            f"--reward.url={server.url}",  # the count of "cat": rule_rewards.count_target_word
            "--reward.call_batch_size=8",
            "--run.steps=40",
            "--learner.lr=3.0e-4",
            "--ppo.kl_coef=0.01",
        )
        run_ppo(cfg)
    return out, server.seen


@pytest.fixture(scope="module")
def zero2_run(zero2_run_and_calls):
    return zero2_run_and_calls[0]


def test_a_remote_reward_gets_each_call_with_the_token(zero2_run_and_calls):
    out, seen = zero2_run_and_calls
    # 40 steps of 32 samples, 8 a call (run_ppo runs no pre-flight)
    assert len(seen) == 40 * 32 // 8
    assert all(auth == f"Bearer token-{out.name}" for auth, _ in seen)
    assert all(set(body) >= {"prompts", "responses", "raw_prompts"} for _, body in seen)


def test_bf16_step0_kl_is_zero_and_every_sync_is_verified(zero2_run):
    rows = metrics_of(zero2_run)
    assert load_config(zero2_run / "config.yaml").model.dtype == "bfloat16"
    assert abs(rows[0]["kl/mean"]) < 1e-4  # policy == reference before any update
    # Every sync passed the check (bits of every tensor, then log-probs within bf16's limit),
    # and the log-probs show bf16's rounding: the engines did compute in bf16.
    assert 1e-4 < rows[0]["weight_sync/initial_max_logprob_diff"] < 0.05
    for row in rows:
        assert 0 < row["weight_sync/max_logprob_diff"] < 0.05, row["step"]
        # The learner computes old_logprobs (bf16 rounding parts it from the engine), with TIS.
        assert row["rollout/logprob_diff/max"] > 0 and 0 <= row["rollout/tis/clipfrac"] < 0.05
    assert [r["weight_sync/version"] for r in rows] == list(range(1, len(rows) + 1))
    final = load_file(str(zero2_run / "final" / "model.safetensors"))
    assert {t.dtype for t in final.values()} == {torch.bfloat16}


def test_run_folder_contract(zero2_run):
    rows = metrics_of(zero2_run)
    assert [r["step"] for r in rows] == list(range(40))
    required = [
        "reward/mean",
        "kl/mean",
        "entropy/mean",
        "response_length/mean",
        "policy/clipfrac",
        "weight_sync/version",
        "weight_sync/max_logprob_diff",
        "throughput/tokens_per_s",
        "timing/generate",
        "timing/score",
        "timing/train",
        "timing/sync",
    ]
    for key in required:
        assert key in rows[0], key
    assert load_config(zero2_run / "config.yaml").run.steps == 40


def test_policy_weights_change(zero2_run, tiny_policy):
    before = load_file(str(Path(tiny_policy) / "model.safetensors"))
    after = load_file(str(zero2_run / "final" / "model.safetensors"))
    assert before.keys() == after.keys()
    moved = max((after[k].float() - before[k]).abs().max().item() for k in before)
    assert moved > 1e-4


def test_rule_reward_rises(zero2_run):
    rewards = [r["reward/mean"] for r in metrics_of(zero2_run)]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.4 and last > 3 * first, rewards


def noisy_weights(policy_dir: str) -> bytes:
    """The policy's weights plus seeded noise, as the learner would export them."""
    gen = torch.Generator().manual_seed(0)
    state = load_file(str(Path(policy_dir) / "model.safetensors"))
    noisy = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in state.items()}
    return save(noisy)


def test_zero3_two_engines_colocated_broadcast_sync_and_a_broken_sync_is_caught(
    ray_local, tiny_dir, tmp_path
):
    # Weights go by the broadcast transport here (gloo: the NCCL path's protocol on CPU), in
    # many small buckets, while ZeRO-3 gathers them one parameter at a time.
    cfg = config(
        tiny_dir,
        tmp_path,
        "--model.dtype=float32",  # its log-prob limits below are fp32's
        "--learner.zero_stage=3",
        "--rollout.num_engines=2",
        "--ppo.old_logprobs=learner",
        "--ppo.old_values=rollout",  # the rollout-time critic forward (the zero2 run fuses it)
        "--run.colocate=true",
        "--rollout.weight_sync=gloo",
        "--rollout.sync_bucket_mib=0.1",
    )
    roles = Roles.start(cfg)
    try:
        trainer = PPOTrainer(cfg, roles)
        rows = [trainer.step(step) for step in range(2)]
        assert all(r["weight_sync/max_logprob_diff"] < 1e-4 for r in rows)
        assert rows[0]["response_length/mean"] > 0 and rows[1]["weight_sync/version"] == 2
        assert ray_local.get([e.version.remote() for e in roles.engines], timeout=60) == [2, 2]
        # Engine 1 now serves other weights than the learner's: the check must stop the run.
        bad = ray_local.put(noisy_weights(cfg.model.policy))
        ray_local.get(roles.engines[1].update_weights.remote(3, bad), timeout=120)
        with pytest.raises(
            RemoteError,
            match=r"weight sync: rollout engine 1 \(version 2\): holds version 3, not 2",
        ):
            trainer.weights.verify()
        # Under the driver's version, the bits show other weights.
        trainer.weights.version = 3
        ray_local.get(roles.engines[0].update_weights.remote(3, bad), timeout=120)
        with pytest.raises(RemoteError, match=r"engine 0 \(version 3\): worker 0 loaded other"):
            trainer.weights.verify()
        # A sync mends both; log-probs beyond the limit (here set below fp32's ~1e-6) stop it.
        assert trainer.weights.sync() < 1e-4
        cfg.rollout.sync_mean_logprob_diff = 1e-12
        with pytest.raises(
            RemoteError, match=r"differs from the learner by .* in mean .*\(limit rollout"
        ):
            trainer.weights.verify()
    finally:
        roles.shutdown()


# ------------------------------------------ faults of a reward function inside the run
# (bad input caught before the run: tests/orchestrator/test_preflight.py)


def run_cli(capsys, tiny_dir, out, *overrides):
    code = main(
        [
            "ppo",
            "--config",
            str(CONFIG),
            f"--model.tiny_dir={tiny_dir}",
            f"--run.output_dir={out}",
            *overrides,
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


@pytest.mark.parametrize(
    ("function", "message"),
    [
        (
            "rewards_for_tests:boom",
            "score: reward 0 failed: ValueError: reward.function 'rewards_for_tests:boom' raised "
            "KeyError",
        ),
        ("rewards_for_tests:wrong_shape", "returned 33 scores for 32 samples"),
        ("rewards_for_tests:hang", "score: reward 0 did not answer within 10 s"),
    ],
)
def test_reward_function_faults_stop_the_run_clearly(
    ray_local, capsys, tiny_dir, tmp_path, function, message
):
    code, err = run_cli(
        capsys,
        tiny_dir,
        tmp_path,
        f"--reward.function={function}",
        "--run.timeout_s=10",
        "--run.steps=1",
        "--learner.num_ranks=1",
        "--learner.micro_batch_size=8",
        "--ppo.minibatch_size=32",
    )
    assert code == 2 and message in err, err
    assert not (tmp_path / "final").exists()
