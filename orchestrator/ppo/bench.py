"""`instructray bench`: PPO steps at fixed settings (fixed response length); prints seconds per
step, tokens/s and the per-phase split. The first step (warm-up) is reported apart."""

from __future__ import annotations

import json
import statistics

from orchestrator.config import Config
from orchestrator.output import RunFolder
from orchestrator.ppo.roles import Roles
from orchestrator.ppo.trainer import PPOTrainer


def summarize(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of every timing/throughput metric over the measured (post warm-up) steps."""
    keys = [k for k in rows[0] if k.startswith(("timing/", "throughput/"))]
    return {k: statistics.fmean(r[k] for r in rows) for k in keys}


def run_bench(cfg: Config) -> RunFolder:
    """Run run.steps + 1 PPO steps of fixed shape: every prompt data.max_prompt_tokens long (cut
    or repeated), every response rollout.max_new_tokens long (ignore_eos)."""
    cfg.rollout.ignore_eos = True
    policy_spec = cfg.model.policy  # before Roles.start resolves tiny:// to a folder
    folder = RunFolder(cfg, stage="bench")
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
    measured = summarize(rows[1:] if len(rows) > 1 else rows)
    r = cfg.rollout
    batch = r.prompts_per_step * r.samples_per_prompt
    print(
        f"bench: {policy_spec} | {batch} sequences x {r.max_new_tokens} new tokens | "
        f"{cfg.learner.num_ranks} rank(s) ZeRO-{cfg.learner.zero_stage} | "
        f"{len(rows) - 1} measured steps after 1 warm-up ({rows[0]['timing/step']:.2f} s)"
    )
    measured["learner/peak_memory_gib"] = max(peak)
    print(f"  seconds/step  {measured['timing/step']:.3f}")
    print(f"  tokens/s      {measured['throughput/tokens_per_s']:.0f}")
    critic = rows[0]["learner/critic_parameters"]
    print(f"  estimator     {cfg.ppo.estimator} ({critic} critic parameters)")
    print(f"  learner peak  {max(peak):.2f} GiB per rank (resident)")
    for k, v in measured.items():
        if k.startswith("timing/") and k != "timing/step":
            print(f"  {k[7:]:<13} {v:.3f} s ({100 * v / measured['timing/step']:.0f}%)")
    (folder.path / "bench.json").write_text(json.dumps(measured, indent=1))
    return folder
