"""PPO on one simulated Ray cluster (`ray.cluster_utils.Cluster`), two runs in turn:

1. on three nodes (a head and two workers), two rollout engines with
   rollout.placement_strategy=SPREAD, two steps; prints the node ids on a line "NODES {json}";
2. the workers gone, on the head alone, which has room for one engine: rollout.autoscale while a
   node joins mid-run (the pool grows onto it) and leaves (the pool shrinks back, the run
   finishes); prints what it saw on a line "SEEN {json}".

    python cluster_ppo.py TINY_DIR OUT_DIR      # the runs in OUT_DIR/spread, OUT_DIR/autoscale

Run in its own process (a process joins one Ray cluster). The cluster's shutdown stops exactly
the processes it started.
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

from instructray.orchestrator.config import load_config, validate_config
from instructray.orchestrator.ppo.run import run_ppo

CONFIG = Path(__file__).parents[2] / "deploy/configs/ppo-tiny-cpu.yaml"
STEPS = 100  # a node joins, an engine starts on it and the node goes (by step 53 seen, quiet)
COMMON = {"node_ip_address": "127.0.0.1", "object_store_memory": 300 * 2**20}
# One engine, two learner ranks, a reward and a reference actor: 5 CPUs, no room for more.
HEAD_CPUS = 5


def alive() -> list[str]:
    """The ids of the cluster's live nodes."""
    return [n["NodeID"] for n in ray.nodes() if n["Alive"]]


def ppo_config(tiny_dir: str, out: Path, *overrides: str):
    given = [f"--model.tiny_dir={tiny_dir}", f"--run.output_dir={out}", *overrides]
    timeouts = ["--run.timeout_s=120", "--run.start_timeout_s=300"]
    return validate_config(load_config(CONFIG, given + timeouts), "ppo")


# A user's reward file beside the reward model: it records the node it ran on and the columns of
# each sample's row (GSM8K-format prompts), and adds nothing to the score.
OWN_REWARD = """
import json, ray

def recorder(prompts, responses, raw_prompts, answer, id, **columns):
    node = ray.get_runtime_context().get_node_id()
    with open({seen!r}, "a") as f:
        for row in zip(raw_prompts, answer, id):
            f.write(json.dumps([node, *row]) + "\\n")
    return [0.0] * len(responses)
"""


def spread(cluster: Cluster, tiny_dir: str, out: Path) -> dict:
    """Two engines spread over three nodes, two steps, on GSM8K-format prompts with a reward
    file (out.parent/own_reward.py, records in out.parent/seen.jsonl) beside the reward model; the
    workers are removed afterwards."""
    workers = [cluster.add_node(**COMMON, num_cpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    reward = out.parent / "own_reward.py"
    reward.write_text(OWN_REWARD.format(seen=str(out.parent / "seen.jsonl")))
    cfg = ppo_config(
        tiny_dir,
        out,
        "--rollout.num_engines=2",
        "--rollout.placement_strategy=SPREAD",
        "--run.steps=2",
        "--data.prompts=tiny://gsm8k",
        "--data.prompt_field=question",
        "--data.max_prompt_tokens=64",
        f"--reward.function=model, {reward}:recorder",
    )
    run_ppo(cfg)
    nodes = {
        "head": cluster.head_node.node_id,
        "workers": [w.node_id for w in workers],
        "alive": alive(),
    }
    for worker in workers:
        cluster.remove_node(worker)
    wait_for("the workers to leave", lambda: alive() == [nodes["head"]], time.monotonic() + 60)
    return nodes


def conduct(cluster: Cluster, out: Path, seen: dict) -> None:
    """Add a node once the run steps, remove it once an engine serves from it (in the main
    thread)."""
    deadline = time.monotonic() + 500
    try:
        wait_for("the first step", lambda: rows_so_far(out), deadline)
        worker = cluster.add_node(**COMMON, num_cpus=1)
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


def autoscale(cluster: Cluster, tiny_dir: str, out: Path) -> dict:
    """rollout.autoscale on the head alone while a node joins and leaves."""
    seen: dict = {"head": cluster.head_node.node_id}
    cfg = ppo_config(
        tiny_dir,
        out,
        "--rollout.autoscale=true",
        "--rollout.min_engines=1",
        "--rollout.max_engines=2",
        "--reward.function=instructray.actors.scoring.rule_rewards:count_target_word",
        "--learner.lr=1.0e-4",
        "--ppo.kl_coef=0.01",
        f"--run.steps={STEPS}",
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
    conduct(cluster, out, seen)
    runner.join(timeout=600)
    if failed or runner.is_alive():
        raise RuntimeError(f"the PPO run failed: {failed or 'still running after 600 s'}")
    seen["alive_at_end"] = alive()
    return seen


def main(tiny_dir: str, out_dir: str) -> None:
    out = Path(out_dir)
    temp = tempfile.mkdtemp(prefix="ircl-", dir="/tmp")  # short: Ray's socket paths
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            **COMMON,
            "num_cpus": HEAD_CPUS,
            "temp_dir": temp,
            "include_dashboard": False,
        },
    )
    try:
        ray.init(address=cluster.address)
        print("NODES " + json.dumps(spread(cluster, tiny_dir, out / "spread")), flush=True)
        print("SEEN " + json.dumps(autoscale(cluster, tiny_dir, out / "autoscale")), flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
