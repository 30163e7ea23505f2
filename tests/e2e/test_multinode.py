"""Scaling out rollouts: on a simulated three-node cluster, rollout.placement_strategy=SPREAD puts
the two engines on different nodes and PPO steps complete (real Ray, vLLM, DeepSpeed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from testdata import every_sync_close, metrics_of

SUPPORT = Path(__file__).parents[1] / "support"
pytestmark = pytest.mark.e2e
# Ray resolves a loopback cluster address to the machine's own IP when it connects, which a
# cluster bound to 127.0.0.1 does not listen on; with "0" the addresses stay on loopback.
LOOPBACK = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@pytest.fixture(scope="module")
def multinode_run(tiny_dir, tiny_policy, tiny_reward, tmp_path_factory):
    out = tmp_path_factory.mktemp("multinode") / "run"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SUPPORT), env.get("PYTHONPATH")]))
    env[LOOPBACK] = "0"
    proc = subprocess.Popen(
        [sys.executable, str(SUPPORT / "multinode_ppo.py"), str(tiny_dir), str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # on a timeout its whole cluster goes with it
    )
    try:
        stdout, stderr = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"the three-node run took over 600 s:\n{stderr[-3000:]}")
    assert proc.returncode == 0, stderr[-3000:]
    [line] = [x for x in stdout.splitlines() if x.startswith("NODES ")]
    return out, json.loads(line[len("NODES ") :])


def test_engines_land_on_different_nodes(multinode_run):
    out, nodes = multinode_run
    assert len(nodes["alive"]) == 3
    placement = json.loads((out / "placement.json").read_text())
    engines = placement["rollout"]
    assert len(engines) == 2 and len(set(engines)) == 2
    assert set(engines) <= set(nodes["alive"])
    assert set(placement) == {"rollout", "reward", "reference", "learner"}


def test_ppo_steps_complete_across_nodes(multinode_run):
    out, _ = multinode_run
    rows = metrics_of(out)
    assert [r["step"] for r in rows] == [0, 1]
    assert every_sync_close(out)  # both engines synced
    assert (out / "final" / "model.safetensors").exists()
