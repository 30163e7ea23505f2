"""Sampling outside PPO (the pipeline's rankings, the demo's evaluation): one vLLM engine that
serves several models in turn, each loaded by version as in PPO's weight sync."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray

from instructray.actors.remote import wait_all
from instructray.actors.rollout.actor import RolloutActor
from instructray.orchestrator.cluster import actor_env
from instructray.orchestrator.config import Config
from instructray.orchestrator.data import tokenize_prompt


class Sampler:
    """One vLLM engine for sampling outside PPO (rankings, evaluation) that can serve several
    models in turn."""

    def __init__(self, cfg: Config, tokenizer: Any, first_model: str):
        r = cfg.rollout
        self.cfg, self.tokenizer, self.version = cfg, tokenizer, 0
        self.engine = (
            ray.remote(RolloutActor)
            .options(num_cpus=r.cpus_per_engine, runtime_env={"env_vars": actor_env(cfg)})
            .remote(
                first_model,
                dtype=cfg.model.dtype,
                max_model_len=cfg.model.max_seq_len,
                seed=cfg.run.seed,
                kv_cache_gib=r.kv_cache_gib,
                enforce_eager=r.enforce_eager,
            )
        )

    def load(self, model_dir: str) -> None:
        """Serve the model in model_dir (its safetensors loaded in place, a new version)."""
        self.version += 1
        data = (Path(model_dir) / "model.safetensors").read_bytes()
        wait_all(
            [self.engine.update_weights.remote(self.version, data)],
            "sampler weights",
            ["rollout engine 0"],
            self.cfg.run.timeout_s,
        )

    def prompt_ids(self, texts: list[str]) -> list[list[int]]:
        template = self.cfg.sft.template
        return [tokenize_prompt({"prompt": t}, self.tokenizer, template) for t in texts]

    def sample(
        self, prompt_ids: list[list[int]], n: int, temperature: float, max_tokens: int
    ) -> dict[str, list]:
        """n responses per prompt (the rollout's top-p, top-k and stop settings; seeded). ->
        RolloutActor.generate's lists plus "text" (decoded, stripped)."""
        r = self.cfg.rollout
        sampling = {
            "n": n,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": r.top_p,
            "top_k": r.top_k,
            "stop": r.stop,
            "stop_token_ids": [self.tokenizer.eos_token_id],
            "ignore_eos": False,
            "seed": self.cfg.run.seed,
        }
        # The first call may wait for the engine to start.
        [out] = wait_all(
            [self.engine.generate.remote(prompt_ids, sampling)],
            "sample",
            ["rollout engine 0"],
            self.cfg.run.start_timeout_s,
        )
        out["text"] = [
            self.tokenizer.decode(ids, skip_special_tokens=True).strip()
            for ids in out["response_ids"]
        ]
        return out

    def close(self) -> None:
        ray.kill(self.engine)
