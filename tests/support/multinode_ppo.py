"""Two PPO steps on a simulated three-node Ray cluster (`ray.cluster_utils.Cluster`): a head and
two workers with their own resources, two rollout engines spread across nodes.

    python multinode_ppo.py TINY_DIR OUT_DIR

Run in its own process (a process joins one Ray cluster); prints the node ids as JSON. The
cluster's shutdown stops exactly the processes it started.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from orchestrator.config import load_config, validate_config
from orchestrator.ppo.run import run_ppo

CONFIG = Path(__file__).parents[2] / "deploy/configs/ppo-tiny-cpu.yaml"


def main(tiny_dir: str, out: str) -> None:
    temp = tempfile.mkdtemp(prefix="irmn-", dir="/tmp")  # short: Ray's socket paths
    common = {"node_ip_address": "127.0.0.1", "object_store_memory": 300 * 2**20}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={**common, "num_cpus": 4, "temp_dir": temp, "include_dashboard": False},
    )
    try:
        workers = [cluster.add_node(**common, num_cpus=2) for _ in range(2)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        cfg = validate_config(
            load_config(
                CONFIG,
                [
                    f"--model.tiny_dir={tiny_dir}",
                    f"--run.output_dir={out}",
                    "--rollout.num_engines=2",
                    "--rollout.placement_strategy=SPREAD",
                    "--run.steps=2",
                    "--run.timeout_s=120",
                    "--run.start_timeout_s=300",
                ],
            ),
            "ppo",
        )
        run_ppo(cfg)
        nodes = {
            "head": cluster.head_node.node_id,
            "workers": [w.node_id for w in workers],
            "alive": [n["NodeID"] for n in ray.nodes() if n["Alive"]],
        }
        print("NODES " + json.dumps(nodes), flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
