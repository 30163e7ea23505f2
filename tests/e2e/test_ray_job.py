"""A Ray cluster as users run one: `ray start --head` (its own temp dir, loopback, token auth),
the tiny pipeline submitted with `ray job submit`, its metrics scraped from the Prometheus
endpoints Ray lists, and `instructray submit / status / logs / scale / stop` against the same
head. The test stops exactly the processes it started (the head's process group). The submitted
pipeline is `instructray pipeline` end to end (SFT -> RM -> PPO, then a second RM + PPO round on
rankings of the policy's own samples), LoRA on every stage; its run folder is checked here too,
so one pipeline run serves both the job and the pipeline's tests."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from prometheus import scrape, values_of
from testdata import SYNCED, metrics_of

from instructray.actors.lora import ADAPTER_WEIGHTS, MERGED
from instructray.actors.scoring.rule_rewards import rank_by_target_word
from instructray.orchestrator.console import DROPPED

ROOT = Path(__file__).parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.e2e
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# The head's node address: loopback, but not one Ray rewrites to the machine's own IP (as it does
# 127.0.0.1 and localhost) when a node joins by it.
HEAD_IP = "127.0.0.2"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Head:
    address: str  # the job API (dashboard) URL
    env: dict[str, str]  # what a client on this machine needs: the token's path, PATH
    temp_dir: Path
    run_dir: Path
    gcs: str  # the GCS address a node joins by

    def alive_nodes(self) -> list[str]:
        """The ids of the cluster's live nodes (Ray's state API through the dashboard)."""
        listed = self.run(
            str(BIN / "ray"), "list", "nodes", f"--address={self.address}", "--format=json"
        )
        assert listed.returncode == 0, listed.stderr
        if listed.stdout.startswith("No resource"):  # none registered yet
            return []
        return [n["node_id"] for n in json.loads(listed.stdout) if n["state"] == "ALIVE"]

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            list(args), env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
        )

    def prometheus_targets(self) -> list[str]:
        """The metrics endpoints Ray lists for Prometheus' file-based service discovery."""
        path = self.temp_dir / "prom_metrics_service_discovery.json"
        if not path.exists():
            return []
        return [t for group in json.loads(path.read_text()) for t in group["targets"]]


@pytest.fixture(scope="module")
def head(tiny_dir):
    # Short: Ray's Unix socket paths live under the temp dir and must stay under ~100 bytes.
    tmp = Path(tempfile.mkdtemp(prefix="irjob-", dir="/tmp"))
    token = tmp / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    gcs, dash, metrics, agent, agent_grpc, rt_agent, client = _free_ports(7)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token),
        RAY_metrics_report_interval_ms="1000",  # gauges reach Prometheus within a second
        RAY_USAGE_STATS_ENABLED="0",
        # The job's driver joins by the head's address; Ray would rewrite a loopback address to
        # the machine's IP, where this head does not listen. "0" keeps it on loopback.
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
    )
    log = (tmp / "head.log").open("w")
    proc = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={gcs}",
            f"--node-ip-address={HEAD_IP}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={rt_agent}",
            f"--ray-client-server-port={client}",
            f"--metrics-export-port={metrics}",
            f"--temp-dir={tmp / 'ray'}",
            "--num-cpus=8",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stopped as one, nothing else touched
    )
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=5)
                break
            except urllib.error.HTTPError as e:  # it answers: up (401 without the token)
                assert e.code == 401, e
                break
            except OSError as e:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"ray start --head did not come up: {e}\n{(tmp / 'head.log').read_text()}"
                    ) from None
                time.sleep(1)
        yield Head(address, env, tmp / "ray", tmp / "run", f"{HEAD_IP}:{gcs}")
    finally:
        _stop(proc, log)
        shutil.rmtree(tmp, ignore_errors=True)


def _stop(proc: subprocess.Popen, log) -> None:
    """Stop a `ray start --block` node and exactly the processes of its group."""
    proc.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=15)  # Ray stops its processes; past that, SIGKILL below
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # whatever of this group is left
    log.close()


@pytest.fixture
def worker(head):
    """A second node joined to the head's cluster as a user adds one (`ray start --address`, its
    own ports, 2 CPUs); yields its node id and stops it after the test."""
    deadline = time.monotonic() + 180
    while not (before := set(head.alive_nodes())):  # the head's own node, once it is listed
        assert time.monotonic() < deadline, "the head lists no node after 180 s"
        time.sleep(1)
    node_manager, object_manager, metrics, agent, agent_grpc, rt_agent = _free_ports(6)
    log = (head.temp_dir.parent / "worker.log").open("w")
    proc = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            f"--address={head.gcs}",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--node-manager-port={node_manager}",
            f"--object-manager-port={object_manager}",
            f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={rt_agent}",
            f"--metrics-export-port={metrics}",
            "--num-cpus=2",
        ],
        # A node joins only where multi-node clusters are enabled; the head stays on loopback.
        env={**head.env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        while not (joined := set(head.alive_nodes()) - before):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "ray start --address did not join the head: "
                    + (head.temp_dir.parent / "worker.log").read_text()
                )
            time.sleep(1)
        yield joined.pop()
    finally:
        _stop(proc, log)


def _client(head: Head):
    from ray.job_submission import JobSubmissionClient

    token = Path(head.env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    return JobSubmissionClient(head.address, headers={"Authorization": f"Bearer {token}"})


def _submit(head: Head, job_id: str, *command: str) -> None:
    # The head's job agent comes up after its dashboard (seconds later on a busy machine): a
    # submission it refuses for that is made again, as the error asks.
    deadline = time.monotonic() + 120
    while True:
        done = head.run(
            str(BIN / "ray"),
            "job",
            "submit",
            f"--address={head.address}",
            f"--submission-id={job_id}",
            "--runtime-env=deploy/runtime_env.yaml",
            "--no-wait",
            "--",
            *command,
        )
        if "No available agent" not in done.stderr or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert done.returncode == 0, done.stderr


def _wait_for(client, job_id: str, timeout_s: float = 600) -> str:
    deadline = time.monotonic() + timeout_s
    while (state := str(client.get_job_status(job_id).value)) not in TERMINAL:
        assert time.monotonic() < deadline, f"job {job_id} still {state} after {timeout_s} s"
        time.sleep(1)
    return state


@pytest.fixture(scope="module")
def pipeline_job(head, tiny_dir):
    """The tiny pipeline through `ray job submit`, its metrics scraped while it runs."""
    job_id = f"pipeline-{secrets.token_hex(4)}"
    _submit(
        head,
        job_id,
        "instructray",
        "pipeline",
        "--config=deploy/configs/pipeline-tiny-cpu.yaml",
        f"--model.tiny_dir={tiny_dir}",
        f"--run.output_dir={head.run_dir}",
        "--run.name=jobtest",
        "--run.steps=4",
        "--sft.epochs=1",
        "--rm.epochs=1",
        "--pipeline.iterations=2",
        "--pipeline.labeler=instructray.actors.scoring.rule_rewards:rank_by_target_word",
        "--pipeline.rank_prompts=12",
        "--pipeline.ranking_models=[tiny://policy]",  # its samples join the policy's
        "--ppo.ptx_coef=0.5",  # PPO-ptx in both PPO stages
        "--data.pretrain=tiny://pretrain",
        "--learner.lora_rank=8",  # every stage trains adapters; each final/ has merged/
    )
    client = _client(head)
    seen: dict[str, list[tuple[dict[str, str], float]]] = {}
    deadline = time.monotonic() + 600
    while (state := str(client.get_job_status(job_id).value)) not in TERMINAL:
        assert time.monotonic() < deadline, f"job {job_id} still {state} after 600 s"
        for name, samples in scrape(head.prometheus_targets()).items():
            seen.setdefault(name, []).extend(samples)
        time.sleep(1)
    logs = client.get_job_logs(job_id)
    assert state == "SUCCEEDED", logs[-3000:]
    return job_id, logs, seen


def test_ray_job_submit_runs_the_tiny_pipeline(pipeline_job, head):
    job_id, logs, _ = pipeline_job
    assert "ppo" in logs  # the job's own output reached Ray's job logs
    cli_logs = head.run(str(BIN / "ray"), "job", "logs", f"--address={head.address}", job_id)
    assert cli_logs.returncode == 0 and "ppo" in cli_logs.stdout


def test_the_console_of_a_working_run_shows_no_failure(pipeline_job):
    # SFT, RM and PPO with weight syncs: what a user reads is the stage lines, progress bars and
    # real warnings (run.log_level warning), none of the library lines that read like failures.
    _, logs, _ = pipeline_job
    for line in (
        "Failed to load weights",  # vLLM's in-place reload on every sync
        "Reloading weights inplace",  # vLLM INFO
        *("FutureWarning", "torch_dtype is deprecated"),
        "Setting accelerator to CPU",  # DeepSpeed's accelerator guess
        "different tokenizers for different LoRAs",  # vLLM, at a first adapter request
        *DROPPED,  # the forwarded lines the driver leaves out (orchestrator/console.py)
    ):
        assert line not in logs, line
    # One bar per stage, drawn by the driver (Ray's tqdm_ray), not a line per update: SFT, then
    # two rounds of RM and PPO. In a job's log (a file) a bar writes a line as it closes and one
    # every minute; no other bar (loading or saving weights) writes at all.
    bars = [line for line in re.sub(r"\x1b\[[0-9;]*m", "", logs).split("\n") if "%|" in line]
    for stage, runs in (("sft", 1), ("rm", 2), ("ppo", 2)):
        drawn = [line for line in bars if re.match(rf"{stage}\b", line)]
        assert runs <= len(drawn) <= 3 * runs, (stage, drawn)
    assert len(bars) <= 3 * 5, bars
    assert logs.rstrip().split("\n")[-1].startswith("instructray pipeline: done in ")


def test_the_dashboard_names_each_actor_by_its_role(pipeline_job, head):
    """Ray's state API (the dashboard's Actors view) shows each actor's role and number."""
    listed = head.run(
        str(BIN / "ray"),
        "list",
        "actors",
        f"--address={head.address}",
        "--detail",
        "--format=json",
        "--limit=1000",
    )
    assert listed.returncode == 0, listed.stderr
    names = {a.get("repr_name") for a in json.loads(listed.stdout)}
    # LoRA: the reference is the learner's own adapter-free forward (no reference actor)
    assert {"rollout-0", "learner-rank-0", "learner-rank-1", "reward-0", "sampler"} <= names


def test_prometheus_shows_the_runs_metrics_with_sanevalues_of(pipeline_job, head):
    _, _, seen = pipeline_job
    driver = {"run": "jobtest", "role": "driver", "stage": "ppo"}
    rewards = values_of(seen, "instructray_reward_mean", **driver)
    assert rewards and all(math.isfinite(v) for v in rewards)
    kl = values_of(seen, "instructray_kl_mean", **driver)  # k1: a batch mean may dip below 0
    assert kl and all(math.isfinite(v) and -1 < v < 10 for v in kl)
    assert all(0 < v < 60 for v in values_of(seen, "instructray_timing_generate", **driver))
    diffs = values_of(seen, "instructray_weight_sync_max_logprob_diff", **driver)
    dtype = yaml.safe_load((head.run_dir / "ppo" / "config.yaml").read_text())["model"]["dtype"]
    assert diffs and max(diffs) < SYNCED[dtype]
    assert max(values_of(seen, "instructray_weight_sync_version", **driver)) >= 1
    for role in ("rollout", "reward", "reference", "learner"):  # each actor's own tokens/s
        tps = values_of(seen, "instructray_tokens_per_s", run="jobtest", role=role)
        assert tps and min(tps) > 0, role
    sft_loss = values_of(seen, "instructray_train_loss", run="jobtest", role="learner", stage="sft")
    assert sft_loss and all(math.isfinite(v) and v > 0 for v in sft_loss)


def test_every_stage_has_its_folder_and_the_pipeline_ends_with_final(pipeline_job, head):
    run = head.run_dir
    for stage in ("sft", "rm", "ppo", "rm-2", "ppo-2"):
        assert (run / stage / "final" / ADAPTER_WEIGHTS).exists(), stage
        assert (run / stage / "final" / MERGED / "model.safetensors").exists(), stage
        assert metrics_of(run / stage), stage
        if stage.startswith("ppo"):  # PPO-ptx's term, every step
            assert all(r["ptx/loss"] > 0 for r in metrics_of(run / stage)), stage
    assert (run / "final").resolve() == (run / "ppo-2" / "final").resolve()
    assert (run / "rm" / "final" / "score_stats.json").exists()
    assert "eval/pairwise_accuracy" in metrics_of(run / "rm")[-1]
    assert yaml.safe_load((run / "config.yaml").read_text())["pipeline"]["iterations"] == 2


def test_stages_are_wired_as_instructgpt(pipeline_job, head):
    run = head.run_dir
    sft = str((run / "sft" / "final" / MERGED).resolve())  # the stages load merged models
    ppo = yaml.safe_load((run / "ppo" / "config.yaml").read_text())["model"]
    assert Path(ppo["policy"]).resolve() == Path(sft)
    assert Path(ppo["reference"]).resolve() == Path(sft)
    assert Path(ppo["reward"]).resolve() == (run / "rm" / "final" / MERGED).resolve()
    ppo2 = yaml.safe_load((run / "ppo-2" / "config.yaml").read_text())["model"]
    assert Path(ppo2["policy"]).resolve() == (run / "ppo" / "final" / MERGED).resolve()
    assert Path(ppo2["reference"]).resolve() == Path(sft)  # still held near the SFT model
    assert Path(ppo2["reward"]).resolve() == (run / "rm-2" / "final" / MERGED).resolve()
    placements = [json.loads((run / s / "placement.json").read_text()) for s in ("ppo", "ppo-2")]
    assert "reference" not in placements[0] and placements[1]["reference"]  # LoRA base; actor
    rm = yaml.safe_load((run / "rm" / "config.yaml").read_text())["model"]
    assert Path(rm["policy"]).resolve() == Path(sft)  # the RM starts from the SFT model


def test_second_round_ranks_the_policys_own_samples(pipeline_job, head):
    run = head.run_dir
    rows = [json.loads(x) for x in (run / "rankings-2.jsonl").read_text().splitlines()]
    new = [r for r in rows if "user_id" not in r]  # tiny://rankings rows carry a user id
    assert 0 < len(new) <= 12 and len(rows) == len(new) + 128
    for row in new:
        assert 2 <= len(row["responses"]) <= 4
        assert len(set(row["responses"])) == len(row["responses"])
        assert row["ranking"] == rank_by_target_word(row["prompt"], row["responses"])
    [other] = yaml.safe_load((run / "rm-2" / "config.yaml").read_text())["pipeline"][
        "ranking_models"
    ]
    assert (Path(other) / "model.safetensors").exists()  # tiny://policy, resolved and loaded


def test_every_grafana_panel_shows_a_metric_the_run_exported(pipeline_job):
    _, _, seen = pipeline_job
    dashboard = json.loads((ROOT / "deploy/grafana/instructray.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    # A name, or a name pattern (__name__=~"..."): each must match a metric the run exported.
    patterns = {p for e in exprs for p in re.findall(r'__name__=~"([^"]+)"', e)}
    names = {m for e in exprs if "__name__" not in e for m in re.findall(r"ray_instructray_\w+", e)}
    assert names and patterns
    missing = sorted(n for n in names if n not in seen)
    missing += sorted(p for p in patterns if not any(re.fullmatch(p, n) for n in seen))
    assert not missing, f"dashboard panels query metrics nobody exported: {missing}"


def test_instructray_status_logs_submit_and_stop(pipeline_job, head, tiny_dir):
    job_id, _, _ = pipeline_job
    status = head.run(str(BIN / "instructray"), "status", job_id, f"--address={head.address}")
    assert status.returncode == 0 and status.stdout.strip() == "SUCCEEDED", status.stderr
    logs = head.run(str(BIN / "instructray"), "logs", job_id, f"--address={head.address}")
    assert logs.returncode == 0 and "ppo" in logs.stdout
    followed = head.run(
        str(BIN / "instructray"), "logs", job_id, "--follow", f"--address={head.address}"
    )  # a finished job: the stream ends with its last line
    assert followed.returncode == 0 and "ppo" in followed.stdout

    submitted = head.run(
        str(BIN / "instructray"),
        "submit",
        "ppo",
        "--config",
        "deploy/configs/ppo-tiny-cpu.yaml",
        f"--address={head.address}",
        f"--model.tiny_dir={tiny_dir}",
        f"--run.output_dir={head.run_dir / 'stopped'}",
        "--run.steps=1000",
        "--no-preflight",  # stopped at once: its inputs need no check (the next test's has one)
    )
    assert submitted.returncode == 0, submitted.stderr
    new_id = re.search(r"submitted job (\S+)", submitted.stdout)[1]
    assert "dashboard:" in submitted.stdout
    stopped = head.run(str(BIN / "instructray"), "stop", new_id, f"--address={head.address}")
    assert stopped.returncode == 0 and stopped.stdout.strip() == "STOPPED", stopped.stderr
    assert not (head.run_dir / "stopped" / "final").exists()


def test_job_api_refuses_a_client_without_the_token(head):
    env = {**head.env, "RAY_AUTH_TOKEN_PATH": str(head.temp_dir.parent / "no-such-token")}
    env.pop("RAY_AUTH_TOKEN", None)
    denied = subprocess.run(
        [str(BIN / "instructray"), "status", "anything", f"--address={head.address}"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert denied.returncode == 2
    assert "instructray status: error:" in denied.stderr


# A user's reward in a file outside the project, read by the job on the cluster: it records what
# it was given (the prompt, and the columns of the sample's row) and rewards the reference answer.
OWN_REWARD = """
import json, ray

def recorder(prompts, responses, raw_prompts, answer, id, **columns):
    # the node it ran on: a reward actor's; the pre-flight runs outside Ray
    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    with open({seen!r}, "a") as f:
        for p, r, q, a, i in zip(prompts, responses, raw_prompts, answer, id):
            f.write(json.dumps({{"prompt": p, "raw": q, "answer": a, "id": i, "node": node}}))
            f.write("\\n")
    return [float(a.split("####")[-1].strip() in r) for r, a in zip(responses, answer)]
"""


def _instructray_submit(head: Head, job_id: str, *args: str) -> None:
    done = head.run(
        str(BIN / "instructray"),
        "submit",
        "ppo",
        f"--address={head.address}",
        f"--submission-id={job_id}",
        *args,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_ray_job_scales_then_stop_leaves_a_checkpoint_the_run_resumes_from(head, worker, tiny_dir):
    """GRPO on GSM8K-format rows (data.prompt_field=question) with a reward file outside the
    project, which `instructray submit` ships with the job, on a cluster of two nodes with a
    reward actor on each: the run scales, stops, resumes, and the reward saw each response's own
    row all along (engine join, samples of a checkpoint) on both nodes."""
    from instructray.orchestrator.data.sources import tiny_gsm8k
    from instructray.orchestrator.ppo.checkpoints import Checkpoints, read_driver_state

    out, client = head.run_dir / "sigterm", _client(head)
    seen = head.temp_dir.parent / "seen.jsonl"
    reward = head.temp_dir.parent / "own_reward.py"
    reward.write_text(OWN_REWARD.format(seen=str(seen)))
    relative = os.path.relpath(reward, ROOT)  # as the user typed it; not a path on the cluster
    ppo = [
        "--config=deploy/configs/grpo-gsm8k-tiny-cpu.yaml",
        f"--model.tiny_dir={tiny_dir}",
        f"--run.output_dir={out}",
        "--rollout.max_staleness=1",  # samples drawn a step ahead: in each checkpoint too
        # the config's math reward, and the user's file beside it
        f"--reward.function=instructray.actors.scoring.math_reward:accuracy_with_format, "
        f"{relative}:recorder",
        "--reward.num_actors=2",
        "--reward.placement_strategy=SPREAD",  # one on each node
    ]
    job_id = f"sigterm-{secrets.token_hex(4)}"
    _instructray_submit(head, job_id, *ppo, "--run.steps=1000")
    deadline = time.monotonic() + 300
    while not (out / "metrics.jsonl").exists() or len(metrics_of(out)) < 2:
        assert str(client.get_job_status(job_id).value) in ("PENDING", "RUNNING")
        assert time.monotonic() < deadline, "the PPO job made no 2 steps in 300 s"
        time.sleep(0.5)
    # Scaled by its job id: a second engine joins the running job (orchestrator/ppo/pool.py).
    scale = (str(BIN / "instructray"), "scale", job_id, "--engines=2", f"--address={head.address}")
    assert (scaled := head.run(*scale)).returncode == 0, scaled.stderr
    while not any(r["rollout/engines"] == 2 for r in metrics_of(out)):
        assert time.monotonic() < deadline, "no second engine joined the job in 300 s"
        time.sleep(0.5)
    stopped = head.run(str(BIN / "ray"), "job", "stop", f"--address={head.address}", job_id)
    assert stopped.returncode == 0, stopped.stderr
    assert _wait_for(client, job_id, 180) == "STOPPED"
    logs = client.get_job_logs(job_id)
    assert "stopped by SIGTERM after step" in logs, logs[-2000:]
    latest = Checkpoints(out, 2).latest()
    assert latest is not None and not (out / "final").exists()
    step = read_driver_state(latest)["step"]
    assert step >= 2 and [r["step"] for r in metrics_of(out)] == list(range(step))

    again = f"resume-{secrets.token_hex(4)}"
    # The inputs were checked by the first submit: this one skips the pre-flight (~10 s here).
    resume = [f"--run.steps={step + 2}", "--run.resume=auto", "--no-preflight"]
    _instructray_submit(head, again, *ppo, *resume)
    assert _wait_for(client, again) == "SUCCEEDED", client.get_job_logs(again)[-3000:]
    rows = metrics_of(out)
    assert [r["step"] for r in rows] == list(range(step + 2))
    assert (out / "final" / "model.safetensors").exists()
    assert rows[0]["learner/critic_parameters"] == 0  # GRPO: no critic
    assert all(0 <= r["reward/accuracy_with_format/mean"] <= 1.1 for r in rows)
    by_id = {row["id"]: row for row in tiny_gsm8k()}
    records = [json.loads(line) for line in seen.read_text().splitlines()]
    nodes = set(head.alive_nodes())
    assert worker in nodes and len(nodes) == 2
    assert {r["node"] for r in records if r["node"]} == nodes  # the file ran on every node
    assert len(records) >= (step + 2) * 32  # every sample of every step, and the pre-flight's
    for r in records:
        row = by_id[r["id"]]
        assert (r["raw"], r["answer"]) == (row["question"], row["answer"])
        assert row["question"] in r["prompt"] and r["prompt"] != row["question"]  # templated


def test_the_labeling_service_runs_on_the_cluster_as_a_ray_serve_app(head, tmp_path):
    """`instructray label serve --ray`: the labelers' API through Serve's proxy, the app in the
    dashboard's Serve view while it runs, and gone from it after Ctrl-C."""
    import httpx

    db = tmp_path / "labels.db"
    added = head.run(str(BIN / "instructray"), "label", "add-labeler", "ann", f"--db={db}")
    assert added.returncode == 0, added.stderr
    labeler = {"Authorization": f"Bearer {added.stdout.strip().splitlines()[-1]}"}
    ray_token = Path(head.env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    dashboard = httpx.Client(
        base_url=head.address, headers={"Authorization": f"Bearer {ray_token}"}, timeout=30
    )
    (port,) = _free_ports(1)
    serve = [str(BIN / "instructray"), "label", "serve", f"--db={db}", "--ray"]
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*serve, f"--address={head.gcs}", f"--port={port}"],
            env=head.env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 240  # Serve's controller and proxy start with the app
        while "as Ray Serve app 'labeling'" not in log.read_text():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        me = httpx.get(f"http://127.0.0.1:{port}/api/me", headers=labeler, timeout=30)
        assert me.status_code == 200 and (me.json()["name"], me.json()["admin"]) == ("ann", False)
        assert httpx.get(f"http://127.0.0.1:{port}/api/me", timeout=30).status_code == 401
        apps = dashboard.get("/api/serve/applications/").json()["applications"]
        assert apps["labeling"]["status"] == "RUNNING", apps
        assert apps["labeling"]["route_prefix"] == "/"
        (deployment,) = apps["labeling"]["deployments"].values()
        assert deployment["status"] == "HEALTHY" and len(deployment["replicas"]) == 1
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert "Ray Serve app 'labeling' deleted" in log.read_text()
    assert "labeling" not in dashboard.get("/api/serve/applications/").json()["applications"]
