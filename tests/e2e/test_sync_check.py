"""The weight-sync check on real Ray, vLLM (CPU) and DeepSpeed, in fp32 and in bf16: it passes every
real sync and stops a broken one (skipped, half applied, or the weights of another version).

In bf16 the engine's and the learner's log-probs differ by rounding (~0.004 at this size) by
more than one small update moves them, so only the fingerprints of the loaded tensors can tell
these cases from a good sync; the probe's log-probs stay within the dtype's limit throughout.
"""

from __future__ import annotations

import pytest
from testdata import ppo_tiny_config

from instructray.actors.faults import ENV
from instructray.orchestrator.ppo.roles import Roles
from instructray.orchestrator.ppo.sync_check import WeightSyncError, sync_logprob_limits
from instructray.orchestrator.ppo.trainer import PPOTrainer

pytestmark = pytest.mark.e2e

# The engine's weight updates, counted from 1: the 2nd (step 1) loads nothing, the 4th (step 2)
# every other tensor. The 3rd and 5th are the syncs that mend them.
FAULTS = "skip:rollout:sync:2,half:rollout:sync:4"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_broken_syncs_are_caught_and_real_ones_pass(
    ray_local, tiny_dir, tmp_path, monkeypatch, dtype
):
    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setenv(ENV, f"{FAULTS}@{markers}")
    cfg = ppo_tiny_config(
        tiny_dir,
        tmp_path / "run",
        f"--model.dtype={dtype}",
        "--learner.num_ranks=1",
        "--learner.zero_stage=0",
        "--ppo.minibatch_size=32",
        "--learner.lr=3e-4",
        "--rollout.sync_bucket_mib=0.0625",  # 64 KiB: the object store carries many buckets
    )
    mean_limit, limit = sync_logprob_limits(cfg)  # a tiny model's max stays within the p99's
    roles = Roles.start(cfg)
    try:
        trainer = PPOTrainer(cfg, roles)
        row = trainer.step(0)  # the initial check and the first sync: both verified
        assert row["weight_sync/version"] == 1
        assert row["weight_sync/buckets"] >= 4
        assert row["weight_sync/initial_max_logprob_diff"] <= limit
        assert row["weight_sync/max_logprob_diff"] <= limit
        assert row["weight_sync/mean_logprob_diff"] <= mean_limit
        # fp32: the engine's log-probs serve as old_logprobs; bf16: the learner's, with TIS.
        assert trainer.engine_logprobs is (dtype == "float32")
        assert ("rollout/tis/clipfrac" in row) is (dtype == "bfloat16")

        with pytest.raises(
            WeightSyncError,
            match=r"rollout engine 0 \(version 2\): worker 0 "
            r"loaded other weights than the learner holds: \d+ of \d+ tensors "
            r"not the learner's",
        ):
            trainer.step(1)  # the engine took version 2 and loaded nothing
        assert trainer.weights.sync() <= limit  # version 3: a full sync mends it

        with pytest.raises(WeightSyncError, match=r"\(version 4\): .* tensors not loaded"):
            trainer.step(2)  # half the tensors
        assert trainer.weights.sync() <= limit

        # Weights of another version: exported before step 3 trained, sent after it.
        old = roles.learner.export_weights()
        assert trainer.step(3)["weight_sync/max_logprob_diff"] <= limit  # a real sync passes
        trainer.weights.version += 1
        ray_local.get(
            roles.engines[0].update_weights.remote(trainer.weights.version, old), timeout=120
        )
        with pytest.raises(WeightSyncError, match=r"tensors not the learner's"):
            trainer.weights.verify()
        # An engine behind the driver's version.
        trainer.weights.version += 1
        with pytest.raises(
            WeightSyncError, match=rf"holds version {trainer.weights.version - 1}, not"
        ):
            trainer.weights.verify()
    finally:
        roles.shutdown()
