"""Sampling outside PPO (the pipeline's rankings, `label publish --prompts`, the demo's
evaluation): one vLLM engine that serves several models in turn, each loaded by version as in
PPO's weight sync; sample_for_ranking draws K distinct answers per prompt for a labeler."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
import safetensors.torch

from instructray.actors.remote import wait_all
from instructray.actors.rollout.actor import RolloutActor
from instructray.actors.sequences import load_tokenizer
from instructray.actors.weight_sync import buckets
from instructray.orchestrator.cluster import actor_env, on_gpu
from instructray.orchestrator.config import Config
from instructray.orchestrator.data import (
    DataError,
    format_prompt,
    load_rows,
    row_problem,
    tokenize_prompt,
)


def engine_options(cfg: Config) -> dict[str, Any]:
    """Ray options of the Sampler's engine: outside any placement group, it holds the GPUs it
    computes on itself (rollout.tensor_parallel_size of them on a GPU run; vLLM drives them with
    its own processes)."""
    r = cfg.rollout
    gpus = r.tensor_parallel_size if on_gpu(cfg) else 0
    return {
        "num_cpus": r.cpus_per_engine,
        "num_gpus": gpus,
        "runtime_env": {"env_vars": actor_env(cfg, "sampler")},
    }


class Sampler:
    """One vLLM engine for sampling outside PPO (rankings, evaluation) that can serve several
    models in turn."""

    def __init__(self, cfg: Config, tokenizer: Any, first_model: str):
        r = cfg.rollout
        self.cfg, self.tokenizer, self.version = cfg, tokenizer, 0
        self.engine = (
            ray.remote(RolloutActor)
            .options(**engine_options(cfg))
            .remote(
                first_model,
                dtype=cfg.model.dtype,
                max_model_len=cfg.model.max_seq_len,
                seed=cfg.run.seed,
                kv_cache_gib=r.kv_cache_gib,
                enforce_eager=r.enforce_eager,
                tensor_parallel_size=r.tensor_parallel_size,
                gpu_memory_utilization=r.gpu_memory_utilization,
            )
        )

    def load(self, model_dir: str) -> None:
        """Serve the model in model_dir (its safetensors loaded in place, a new version), sent
        as the PPO sync sends weights: in buckets of rollout.sync_bucket_mib through the object
        store."""
        self.version += 1
        bucket_bytes = int(self.cfg.rollout.sync_bucket_mib * 2**20)
        parts = [
            ray.put(safetensors.torch.save(dict(bucket)))
            for bucket in buckets(saved_tensors(Path(model_dir)), bucket_bytes)
        ]
        wait_all(
            [self.engine.update_weights.remote(self.version, parts)],
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


def saved_tensors(model_dir: Path) -> Iterator[tuple[str, Any]]:
    """Every tensor of a Hugging Face folder's weights (model.safetensors, or the shards its
    model.safetensors.index.json names), one at a time, by name."""
    from safetensors import safe_open

    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (model_dir / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise ValueError(f"{model_dir} holds neither model.safetensors nor its index")
    for file in files:
        with safe_open(str(model_dir / file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is no dict)
                yield name, f.get_tensor(name)


def pool_responses(per_model: list[list[str]]) -> list[str]:
    """One prompt's samples from several models, interleaved (one of each model in turn, so that
    the first K mix the models), distinct and non-empty."""
    pooled: list[str] = []
    for text in (t for group in itertools.zip_longest(*per_model) for t in group):
        if text and text not in pooled:
            pooled.append(text)
    return pooled


def sample_for_ranking(cfg: Config, policy: str) -> list[dict[str, Any]]:
    """Sample K responses per prompt from `policy` (and from each of `pipeline.ranking_models`,
    interleaved) with one vLLM engine. -> rows {"prompt" or "messages", "responses",
    "formatted" (the prompt as the model read it), "author" (its row's data.user_field)}."""

    p, r, d = cfg.pipeline, cfg.rollout, cfg.data
    tokenizer = load_tokenizer(policy, cfg.model.trust_remote_code)
    rows, ids = [], []
    for row in load_rows(d.prompts, d.split):
        if row_problem(row) is None:
            tokens = tokenize_prompt(row, tokenizer, cfg.sft.template)
            if len(tokens) <= d.max_prompt_tokens:
                rows.append(row)
                ids.append(tokens)
    if not rows:
        raise DataError(f"{d.prompts}: no usable prompts to sample rankings for")
    picked = random.Random(cfg.run.seed).sample(range(len(rows)), min(p.rank_prompts, len(rows)))
    models = [policy, *p.ranking_models]
    for model in p.ranking_models:
        if not (Path(model) / "model.safetensors").is_file():
            raise ValueError(
                f"pipeline.ranking_models: {model} is not a model folder with model.safetensors"
            )
    sampler = Sampler(cfg, tokenizer, policy)
    samples = [[[] for _ in models] for _ in picked]  # [prompt][model] -> texts
    try:
        for m, model in enumerate(models):
            if m:
                sampler.load(model)
            out = sampler.sample(
                [ids[i] for i in picked], p.samples_per_prompt, r.temperature, r.max_new_tokens
            )
            for i, text in zip(out["prompt_index"], out["text"], strict=True):
                samples[i][m].append(text)
    finally:
        sampler.close()
    k_max, k_min = p.samples_per_prompt, p.min_samples_per_prompt or p.samples_per_prompt
    k_rng = random.Random(cfg.run.seed + 1)
    ranked = []
    for i, per_model in enumerate(samples):
        responses = pool_responses(per_model)
        if len(responses) < 2:
            continue
        if len(responses) > k_min:  # K varies per prompt, k_min..samples_per_prompt
            responses = responses[: k_rng.randint(k_min, min(k_max, len(responses)))]
        row = rows[picked[i]]
        text = format_prompt(row, tokenizer, cfg.sft.template)
        prompt = {"messages": row["messages"]} if row.get("messages") else {"prompt": row["prompt"]}
        author = row.get(d.user_field)
        ranked.append({**prompt, "responses": responses, "formatted": text, "author": author})
    return ranked
