"""Scaling out rollouts on a simulated multi-node cluster (real Ray, vLLM, DeepSpeed): on three
nodes rollout.placement_strategy=SPREAD puts the two engines on different nodes and PPO steps
complete; with rollout.autoscale the pool grows onto a node that joins mid-run and shrinks when
it leaves, and the run finishes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from testdata import every_sync_close, metrics_of, run_child

SUPPORT = Path(__file__).parents[1] / "support"
pytestmark = pytest.mark.e2e
# Ray resolves a loopback cluster address to the machine's own IP when it connects, which a
# cluster bound to 127.0.0.1 does not listen on; with "0" the addresses stay on loopback.
LOOPBACK = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@pytest.fixture(scope="module")
def cluster_runs(tiny_dir, tiny_policy, tiny_reward, tmp_path_factory):
    """Both runs on one simulated cluster (support/cluster_ppo.py): SPREAD on three nodes, then
    autoscale on the head alone."""
    out = tmp_path_factory.mktemp("cluster")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SUPPORT), env.get("PYTHONPATH")]))
    env[LOOPBACK] = "0"
    argv = [str(SUPPORT / "cluster_ppo.py"), str(tiny_dir), str(out)]
    stdout, stderr = run_child(argv, 900, "cluster_ppo.py", env)
    printed = {
        tag: json.loads(rest)
        for tag, _, rest in (x.partition(" ") for x in stdout.splitlines())
        if tag in ("NODES", "SEEN")
    }
    return out, printed["NODES"], {**printed["SEEN"], "stderr": stderr}


@pytest.fixture(scope="module")
def multinode_run(cluster_runs):
    out, nodes, _ = cluster_runs
    return out / "spread", nodes


@pytest.fixture(scope="module")
def autoscale_run(cluster_runs):
    out, _, seen = cluster_runs
    return out / "autoscale", seen


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


def test_a_reward_file_sees_each_samples_own_row_on_the_cluster(multinode_run):
    from instructray.orchestrator.data.sources import tiny_gsm8k

    out, nodes = multinode_run
    by_id = {row["id"]: row for row in tiny_gsm8k()}
    records = [json.loads(x) for x in (out.parent / "seen.jsonl").read_text().splitlines()]
    assert len(records) == 2 * 32  # two steps of 8 prompts x 4 samples
    for node, raw, answer, id_ in records:
        assert node in nodes["alive"]
        assert (raw, answer) == (by_id[id_]["question"], by_id[id_]["answer"])


def test_autoscale_grows_onto_a_joining_node_and_shrinks_when_it_leaves(autoscale_run):
    out, seen = autoscale_run
    assert "error" not in seen, seen["error"]
    rows = metrics_of(out)
    engines = [r["rollout/engines"] for r in rows]
    # 1 engine until the node joined; 2 (the new one on that node); 1 after it left.
    assert engines[0] == 1 and engines[-1] == 1
    grown = seen["grown_at"]
    assert seen["added_after_step"] < grown < seen["removed_after_step"] + 1
    assert all(e == 1 for e in engines[: seen["added_after_step"] + 1])
    assert seen["placement_grown"]["rollout"] == [seen["head"], seen["worker"]]
    assert rows[-1]["rollout/engine_joins"] == 1 and rows[-1]["rollout/engine_leaves"] == 1
    assert seen["worker"] not in seen["alive_at_end"]
    assert "left the pool (its node left the cluster)" in seen["stderr"]
    # The run finished every step, every sync verified (the joined engine's too).
    assert [r["step"] for r in rows] == list(range(len(rows))) and len(rows) == 100
    assert every_sync_close(out)
    assert [r["weight_sync/version"] for r in rows] == list(range(1, len(rows) + 1))
    assert (out / "final" / "model.safetensors").exists()
