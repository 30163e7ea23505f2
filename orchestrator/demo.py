"""`instructray demo`: what a newcomer runs first. Today: the distributed PPO loop on tiny models
with a rule reward, then a summary. The full InstructGPT story (SFT -> RM -> PPO, judged by a
simulated labeler) replaces it as it lands."""

from __future__ import annotations

from orchestrator.config import Config
from orchestrator.ppo import run_ppo


def run_demo(cfg: Config) -> None:
    """Run PPO as configured and print where everything went."""
    print(
        f"InstructRay demo: PPO on {cfg.model.policy} with "
        f"{cfg.reward.function or cfg.model.reward} as the reward, {cfg.run.steps} steps"
    )
    folder = run_ppo(cfg)
    rows = folder.read_metrics()
    first, last = rows[0], rows[-1]
    print(
        f"reward/mean {first['reward/mean']:.3f} -> {last['reward/mean']:.3f}; "
        f"kl/mean {last['kl/mean']:.3f}; weight sync v{last['weight_sync/version']} "
        f"max log-prob diff {last['weight_sync/max_logprob_diff']:.1e}; "
        f"{last['timing/step']:.2f} s/step"
    )
    print(f"run folder: {folder.path} (config.yaml, metrics.jsonl, final/)")
