"""`instructray demo`: what a newcomer runs first. Today: the tiny models and the PPO plan.

The PPO loop and then the full InstructGPT story replace this as they land (see the issues).
"""

from __future__ import annotations

from actors.tiny_models import resolve
from orchestrator.config import Config


def _param_count(path: str) -> int:
    import json
    from pathlib import Path

    from safetensors import safe_open

    with safe_open(str(Path(path) / "model.safetensors"), framework="pt") as f:
        total = 0
        for name in f.keys():
            shape = f.get_slice(name).get_shape()
            n = 1
            for d in shape:
                n *= d
            total += n
    json.loads((Path(path) / "config.json").read_text())  # a real HF folder
    return total


def run_demo(cfg: Config) -> None:
    """Build the tiny models the config names and print the plan of one PPO step."""
    cache = cfg.model.tiny_dir or None
    print("InstructRay demo: the foundation (config, kernels, tiny models)")
    for role, spec in (("policy", cfg.model.policy), ("reward", cfg.model.reward)):
        path = resolve(spec, cache)
        print(f"  {role:<7} {spec:<16} -> {path} ({_param_count(path):,} parameters)")
    r, p, learner = cfg.rollout, cfg.ppo, cfg.learner
    batch = r.prompts_per_step * r.samples_per_prompt
    print(
        f"  one PPO step: {r.prompts_per_step} prompts x {r.samples_per_prompt} samples = {batch} "
        f"responses of <= {r.max_new_tokens} tokens on {r.num_engines} vLLM engine(s); "
        f"{p.ppo_epochs} epoch(s) of minibatches of {p.minibatch_size} x {learner.num_ranks} "
        f"rank(s) under ZeRO-{learner.zero_stage}; KL coef {p.kl_coef} ({p.kl_estimator})"
    )
    print("  the distributed PPO loop is the next piece of work; `make test` checks the math.")
