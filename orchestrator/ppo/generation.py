"""Sampling a step's responses on the rollout engines: started (the calls go out, the prompts split
by load) and collected (merged into one Rollout) apart, so that with rollout.max_staleness >= 1 the
engines generate the next step's samples while the learner trains on this step's.

Each sample carries the weight version its engine held when it drew it (the engine says): a
restarted engine that was brought to newer weights draws under those, and the sample is fresher.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from instructray.actors.sequences import make_sequence_batch
from instructray.orchestrator.config import Config
from instructray.orchestrator.ppo.calls import Pending, RoleCalls
from instructray.orchestrator.ppo.experience import Rollout, pad_rows, split_by_load
from instructray.orchestrator.ppo.roles import Roles


@dataclass
class Generating:
    """Generate calls in flight for one step."""

    step: int
    prompt_idx: list[int]
    parts: list[range]  # each engine's prompts, by their place in prompt_idx
    engine_ids: list[int]  # the pool's id of the engine each part went to
    pending: Pending


def sampling(cfg: Config, eos_token_id: int, step: int, part: int, version: int) -> dict:
    """The engines' sampling settings for one part of a step (seeded by run, step and part)."""
    r = cfg.rollout
    return {
        "n": r.samples_per_prompt,
        "max_tokens": r.max_new_tokens,
        "temperature": r.temperature,
        "top_p": r.top_p,
        "top_k": r.top_k,
        "stop": list(r.stop),
        "stop_token_ids": [eos_token_id],
        "ignore_eos": r.ignore_eos,
        "seed": cfg.run.seed * 100_003 + step * 1009 + part,
        "version": version,  # the engine refuses if it holds older weights (restarted)
    }


def start(
    cfg: Config,
    roles: Roles,
    calls: RoleCalls,
    engine_ids: list[int],
    step: int,
    prompt_idx: list[int],
    version: int,
) -> Generating:
    """Send rollout.samples_per_prompt samples per prompt to the engines, prompts split by load
    (each prompt costs its tokens plus the most its samples may add); returns at once."""
    prompts, eos = roles.prompts, roles.tokenizer.eos_token_id
    loads = [len(prompts.token_ids[i]) + cfg.rollout.max_new_tokens for i in prompt_idx]
    parts = split_by_load(loads, min(len(roles.engines), len(loads)))
    args = [
        ([prompts.token_ids[prompt_idx[i]] for i in part], sampling(cfg, eos, step, e, version))
        for e, part in enumerate(parts)
    ]
    pending = calls.start("rollout", lambda a, *x: a.generate.remote(*x), args)
    return Generating(step, prompt_idx, parts, list(engine_ids[: len(parts)]), pending)


def collect(roles: Roles, calls: RoleCalls, gen: Generating) -> Rollout:
    """Wait for a step's generate calls (a dead engine recovered and its part redone) and merge
    them, in engine order, into the step's Rollout."""
    outs = calls.wait(gen.pending, "generate")
    prompts, tok = roles.prompts, roles.tokenizer
    keys = ("prompt", "prompt_ids", "response_ids", "logprobs", "finish_reasons", "version")
    merged: dict[str, list[Any]] = {k: [] for k in (*keys, "columns")}
    groups = []  # each sample's prompt by its place in this step: ids, never texts
    for out, part in zip(outs, gen.parts, strict=True):
        for i, local in enumerate(out["prompt_index"]):
            global_idx = gen.prompt_idx[part[local]]
            groups.append(part[local])
            merged["prompt"].append(prompts.texts[global_idx])
            merged["prompt_ids"].append(prompts.token_ids[global_idx])
            merged["columns"].append(prompts.columns[global_idx] if prompts.columns else {})
            for k in keys[2:5]:
                merged[k].append(out[k][i])
            merged["version"].append(out["version"])
    batch = make_sequence_batch(merged["prompt_ids"], merged["response_ids"], tok.pad_token_id)
    return Rollout(
        torch.tensor(groups, dtype=torch.long),
        merged["prompt"],
        merged["prompt_ids"],
        merged["response_ids"],
        tok.batch_decode(merged["response_ids"], skip_special_tokens=True),
        merged["finish_reasons"],
        batch,
        pad_rows(merged["logprobs"], batch.response_mask),
        torch.tensor(merged["version"], dtype=torch.long),
        {i: out["seconds"] for i, out in zip(gen.engine_ids, outs, strict=True)},
        {i: out["tokens"] for i, out in zip(gen.engine_ids, outs, strict=True)},
        merged["columns"],
    )
