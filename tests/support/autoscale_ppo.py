"""PPO with rollout.autoscale on a simulated cluster (`ray.cluster_utils.Cluster`) that starts as
one node with room for one engine: a node joins mid-run (the pool grows onto it), then leaves
(the pool shrinks back and the run finishes).

    python autoscale_ppo.py TINY_DIR OUT_DIR

Run in its own process (a process joins one Ray cluster); prints what it saw as JSON on a line
starting "SEEN ". The cluster's shutdown stops exactly the processes it started.
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster
from testdata import rows_so_far, wait_for

from orchestrator.config import load_config, validate_config
from orchestrator.ppo.run import run_ppo

CONFIG = Path(__file__).parents[2] / "deploy/configs/ppo-tiny-cpu.yaml"
STEPS = 100  # a node joins, an engine starts on it and the node goes (by step 53 seen, quiet)


def conduct(cluster: Cluster, common: dict, out: Path, seen: dict) -> None:
    """Add a node once the run steps, remove it once an engine serves from it (in the main
    thread)."""
    deadline = time.monotonic() + 500
    try:
        wait_for("the first step", lambda: rows_so_far(out), deadline)
        worker = cluster.add_node(**common, num_cpus=1)
        seen["worker"] = worker.node_id
        seen["added_after_step"] = rows_so_far(out)[-1]["step"]
        grown = wait_for(
            "an engine on the new node",
            lambda: [r for r in rows_so_far(out) if r["rollout/engines"] == 2][1:],
            deadline,
        )
        seen["placement_grown"] = json.loads((out / "placement.json").read_text())
        seen["grown_at"] = grown[0]["step"]
        cluster.remove_node(worker)
        seen["removed_after_step"] = rows_so_far(out)[-1]["step"]
        wait_for(
            "the pool to shrink",
            lambda: [r for r in rows_so_far(out) if r["rollout/engine_leaves"] == 1],
            deadline,
        )
    except BaseException as e:  # reported with what was seen
        seen["error"] = repr(e)


def main(tiny_dir: str, out_dir: str) -> None:
    out = Path(out_dir)
    temp = tempfile.mkdtemp(prefix="iras-", dir="/tmp")  # short: Ray's socket paths
    common = {"node_ip_address": "127.0.0.1", "object_store_memory": 300 * 2**20}
    # One engine, two learner ranks, a reward and a reference actor: 5 CPUs, no room for more.
    cluster = Cluster(
        initialize_head=True,
        head_node_args={**common, "num_cpus": 5, "temp_dir": temp, "include_dashboard": False},
    )
    seen: dict = {"head": cluster.head_node.node_id}
    try:
        ray.init(address=cluster.address)
        cfg = validate_config(
            load_config(
                CONFIG,
                [
                    f"--model.tiny_dir={tiny_dir}",
                    f"--run.output_dir={out}",
                    "--rollout.autoscale=true",
                    "--rollout.min_engines=1",
                    "--rollout.max_engines=2",
                    "--reward.function=actors.rule_rewards:count_target_word",
                    "--learner.lr=1.0e-4",
                    "--ppo.kl_coef=0.01",
                    f"--run.steps={STEPS}",
                    "--run.timeout_s=120",
                    "--run.start_timeout_s=300",
                ],
            ),
            "ppo",
        )
        # The run in a thread, the cluster changed from the main one (starting and stopping a
        # node's processes needs the main thread's signals).
        failed: list[BaseException] = []

        def run() -> None:
            try:
                run_ppo(cfg)
            except BaseException as e:
                failed.append(e)

        runner = threading.Thread(target=run)
        runner.start()
        conduct(cluster, common, out, seen)
        runner.join(timeout=600)
        if failed or runner.is_alive():
            raise RuntimeError(f"the PPO run failed: {failed or 'still running after 600 s'}")
        seen["alive_at_end"] = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
        print("SEEN " + json.dumps(seen), flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
