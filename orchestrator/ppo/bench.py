"""`instructray bench`: PPO steps at fixed settings (fixed response length); prints seconds per
step, tokens/s and the per-phase split. The first step (warm-up) is reported apart."""

from __future__ import annotations

import json
import statistics
import threading

from instructray.orchestrator.config import Config
from instructray.orchestrator.config.lora import adapter_sync
from instructray.orchestrator.output import RunFolder
from instructray.orchestrator.ppo.roles import Roles
from instructray.orchestrator.ppo.trainer import PPOTrainer


def summarize(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of every timing/throughput metric over the measured (post warm-up) steps."""
    keys = [k for k in rows[0] if k.startswith(("timing/", "throughput/"))]
    return {k: statistics.fmean(r[k] for r in rows) for k in keys}


class MachineMemory:
    """The peak of the machine's memory in use while it runs, above what was in use before it
    started (all of a one-machine run's actors: engines, scorers, learner ranks), sampled."""

    def __init__(self, every_s: float = 0.2):
        import psutil

        self._used = lambda: psutil.virtual_memory().used
        self.before = self.peak = self._used()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(every_s,), daemon=True)
        self._thread.start()

    def _sample(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.peak = max(self.peak, self._used())

    def stop(self) -> float:
        """-> the peak above the start, GiB."""
        self._stop.set()
        self._thread.join()
        return (self.peak - self.before) / 2**30


def run_bench(cfg: Config) -> RunFolder:
    """Run run.steps + 1 PPO steps of fixed shape: every prompt data.max_prompt_tokens long (cut
    or repeated), every response rollout.max_new_tokens long (ignore_eos)."""
    cfg.rollout.ignore_eos = True
    policy_spec = cfg.model.policy  # before Roles.start resolves tiny:// to a folder
    folder = RunFolder(cfg, stage="bench")
    memory = MachineMemory()
    roles = Roles.start(cfg)
    n = cfg.data.max_prompt_tokens
    roles.prompts.token_ids = [(ids * n)[:n] for ids in roles.prompts.token_ids]
    try:
        trainer = PPOTrainer(cfg, roles)
        rows = []
        for step in range(cfg.run.steps + 1):
            metrics = trainer.step(step)
            folder.log(metrics)
            rows.append(metrics)
        peak = roles.learner.peak_memory_gib()
    finally:
        folder.close()
        roles.shutdown()
        run_peak = memory.stop()
    measured = summarize(rows[1:] if len(rows) > 1 else rows)
    r = cfg.rollout
    batch = r.prompts_per_step * r.samples_per_prompt
    print(
        f"bench: {policy_spec} | {batch} sequences x {r.max_new_tokens} new tokens | "
        f"{cfg.learner.num_ranks} rank(s) ZeRO-{cfg.learner.zero_stage} | "
        f"{len(rows) - 1} measured steps after 1 warm-up ({rows[0]['timing/step']:.2f} s)"
    )
    measured["learner/peak_memory_gib"] = max(peak)
    measured["run/peak_memory_gib"] = run_peak
    first = rows[0]
    for key in ("weight_sync/bytes", "learner/policy_trainable_parameters"):
        measured[key] = first[key]
    measured["learner/policy_optimizer_state_bytes"] = rows[-1][
        "learner/policy_optimizer_state_bytes"
    ]
    print(f"  seconds/step  {measured['timing/step']:.3f}")
    print(f"  tokens/s      {measured['throughput/tokens_per_s']:.0f}")
    critic = rows[0]["learner/critic_parameters"]
    print(f"  estimator     {cfg.ppo.estimator} ({critic} critic parameters)")
    print(f"  learner peak  {max(peak):.2f} GiB per rank (resident)")
    print(f"  run peak      {run_peak:.2f} GiB (the machine's memory in use, above the start)")
    lora = f"LoRA rank {cfg.learner.lora_rank}" if cfg.learner.lora_rank else "full fine-tune"
    print(
        f"  policy        {lora}: {first['learner/policy_trainable_parameters']} of "
        f"{first['learner/policy_parameters']} parameters train, optimizer state "
        f"{measured['learner/policy_optimizer_state_bytes'] / 2**20:.1f} MiB"
    )
    sent = "adapter" if adapter_sync(cfg) else "weights"
    print(
        f"  sync          {measured['weight_sync/bytes'] / 2**20:.2f} MiB per engine ({sent}) "
        f"in {measured.get('timing/sync', 0.0):.3f} s"
    )
    for k, v in measured.items():
        if k.startswith("timing/") and k != "timing/step":
            print(f"  {k[7:]:<13} {v:.3f} s ({100 * v / measured['timing/step']:.0f}%)")
    (folder.path / "bench.json").write_text(json.dumps(measured, indent=1))
    return folder
