"""Pre-flight: every input a stage will read, checked on the driver before Ray or any actor
starts, for every stage of a pipeline at once. A bad input costs seconds here instead of the
minutes (hours on a real model) of a run that fails after its actors came up, or trains against
nonsense.

What it checks, in order: the output folder; each model folder the stage loads (weights in
safetensors, the reward model a one-label sequence classifier: orchestrator/model_check.py); the
tokenizer; every data file, opened and every row checked by the same loaders the run uses; the
reward function and the pipeline's labeler, imported and called once on one sample with their
return checked by the rules the run applies. Each failure is one line (the error types the CLI
prints without a traceback); warnings are logged, one line each.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from instructray.actors.scoring.rule_rewards import check_ranking, check_scores, load_function
from instructray.orchestrator.config import REWARD_MODEL, Config, reward_sources, uses_reward_model
from instructray.orchestrator.data import (
    load_demonstrations,
    load_pretrain,
    load_prompt_set,
    load_rankings,
)
from instructray.orchestrator.model_check import (
    check_lora_targets,
    check_model_folder,
    check_tokenizer,
)
from instructray.orchestrator.model_specs import resolve_models
from instructray.orchestrator.output import check_run_folder

logger = logging.getLogger(__name__)

SIGNATURES = {
    "reward.function": "fn(prompts: list[str], responses: list[str]) -> list[float]",
    "pipeline.labeler": "fn(prompt: str, responses: list[str]) -> list[int], best first",
}

# Stages that read user inputs; the demo builds its own world and eval reads a finished run.
DATA_STAGES = {
    "sft": ("demonstrations",),
    "rm": ("rankings",),
    "ppo": ("prompts",),
    "bench": (),
    "pipeline": ("demonstrations", "rankings", "prompts"),
}


class PreflightError(ValueError):
    """An input the run would fail on; the message is one line that says what to fix."""


def preflight(cfg: Config, stage: str) -> None:
    """Check what `stage` will read (cfg is left as it is); raise on the first bad input."""
    if stage != "eval":  # eval reads a finished run's folder and writes its report there
        check_run_folder(Path(cfg.run.output_dir).resolve(), cfg.run.resume)
    if stage not in DATA_STAGES:
        return
    cfg = copy.deepcopy(cfg)  # resolving models makes paths concrete; config.yaml keeps specs
    scores = stage in ("ppo", "bench")  # the stages that run reward scorers
    reward_model = scores and uses_reward_model(cfg)
    own_reference = scores and bool(cfg.model.reference)
    resolve_models(cfg, need_reward=reward_model)
    for role in ("policy", "reference", "reward"):  # each key names its role
        if role == "reference" and not own_reference:
            continue  # an empty reference is the policy, checked already
        if role == "reward" and not reward_model:
            continue
        _check_model(cfg, getattr(cfg.model, role), f"model.{role}", role)
    policy, lora = cfg.model.policy, cfg.learner
    if lora.lora_rank and stage != "bench" and Path(policy).is_dir():  # the adapters' targets
        trust = cfg.model.trust_remote_code
        for line in check_lora_targets(
            policy, "model.policy", lora.lora_targets, trust_remote_code=trust
        ):
            logger.warning(line)
    for spec in cfg.pipeline.ranking_models if stage == "pipeline" else []:
        _check_model(cfg, spec, "pipeline.ranking_models", "ranking")
    tokenizer = _tokenizer(cfg)
    rows = {what: _check_data(cfg, stage, what, tokenizer) for what in DATA_STAGES[stage]}
    if stage in ("ppo", "pipeline") and cfg.ppo.ptx_coef > 0:  # PPO-ptx's texts
        d = cfg.data
        load_pretrain(d.pretrain, tokenizer, cfg.model.max_seq_len, d.split, d.on_bad_row)
    prompt = _one_prompt(rows)
    for spec in reward_sources(cfg) if scores else []:  # each function entry, called once
        if spec != REWARD_MODEL:
            check_reward_function(spec, prompt, cfg.run.timeout_s)
    if stage == "pipeline" and (cfg.pipeline.iterations > 1 or not cfg.data.rankings):
        check_labeler(cfg.pipeline.labeler, prompt, cfg.run.timeout_s)


def _check_model(cfg: Config, path: str, key: str, role: str) -> None:
    if not Path(path).is_dir():  # a Hub name: read by transformers where it runs
        return
    for line in check_model_folder(path, key, role, trust_remote_code=cfg.model.trust_remote_code):
        logger.warning(line)


def _tokenizer(cfg: Config) -> Any:
    from instructray.actors.sequences import load_tokenizer

    path = cfg.model.tokenizer
    key = "model.tokenizer" if path != cfg.model.policy else "model.policy"
    if Path(path).is_dir():
        for line in check_tokenizer(path, key, trust_remote_code=cfg.model.trust_remote_code):
            logger.warning(line)
    return load_tokenizer(path, cfg.model.trust_remote_code)


def _check_data(cfg: Config, stage: str, what: str, tokenizer: Any) -> list[str]:
    """Load data.<what> as the stage will (every row checked); -> a few prompt texts."""
    if what == "rankings" and stage == "pipeline" and not cfg.data.rankings:
        return []  # the pipeline ranks the SFT model's samples instead (its labeler is checked)
    if what == "prompts":
        prompts = load_prompt_set(cfg, tokenizer)
        return prompts.texts[:1]
    loader = load_demonstrations if what == "demonstrations" else load_rankings
    examples = loader(cfg, tokenizer)
    first = (examples.train or examples.eval)[:1]
    return [tokenizer.decode(example.prompt_ids, skip_special_tokens=True) for example in first]


def _one_prompt(rows: dict[str, list[str]]) -> str:
    for texts in rows.values():
        if texts:
            return texts[0]
    return "Tell me about the cat."


def check_reward_function(spec: str, prompt: str, timeout_s: float) -> None:
    """reward.function imported and called once as fn([prompt], [response]), its return
    checked as the reward actor checks it."""
    fn = load_function(spec, "reward.function")
    scores = _call_once(fn, spec, "reward.function", timeout_s, [prompt], ["The cat sat."])
    check_scores(scores, 1, [prompt], f"reward.function = {spec!r}")


def check_labeler(spec: str, prompt: str, timeout_s: float) -> None:
    """pipeline.labeler imported and called once as fn(prompt, [two responses]), its return
    checked as the pipeline checks it."""
    fn = load_function(spec, "pipeline.labeler")
    responses = ["The cat sat.", "A dog ran."]
    ranking = _call_once(fn, spec, "pipeline.labeler", timeout_s, prompt, responses)
    check_ranking(ranking, len(responses), f"pipeline.labeler = {spec!r}")


def _call_once(fn: Callable[..., Any], spec: str, key: str, timeout_s: float, *args: Any) -> Any:
    """fn(*args) in a thread, given up after timeout_s (a hung function cannot be killed, but
    the run need not wait for it: the thread is a daemon)."""
    out: dict[str, Any] = {}

    def call() -> None:
        try:
            out["value"] = fn(*args)
        except BaseException as e:  # reported below, with its type
            out["error"] = e

    thread = threading.Thread(target=call, name=f"preflight {key}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise PreflightError(
            f"{key} = {spec!r} did not return within {timeout_s:g} s (run.timeout_s) when "
            f"called once on one sample before the run"
        )
    if "error" in out:
        e = out["error"]
        first = str(e).splitlines()[0] if str(e) else ""
        raise PreflightError(
            f"{key} = {spec!r} failed when called once on one sample: {type(e).__name__}: "
            f"{first[:200]} (expected {SIGNATURES[key]})"
        )
    return out["value"]
