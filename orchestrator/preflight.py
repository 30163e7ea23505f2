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
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from instructray.actors.scoring.reward_functions import (
    RewardFunction,
    columns_as_lists,
    remote_reward,
)
from instructray.actors.scoring.rule_rewards import check_ranking
from instructray.orchestrator.config import (
    REWARD_MODEL,
    URL_SOURCE,
    Config,
    reward_call_policy,
    reward_sources,
    uses_reward_model,
)
from instructray.orchestrator.config.functions import load_function
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
    "reward.function": "fn(prompts: list[str], responses: list[str], **columns) -> list[float]",
    "reward.url": "a JSON list of one score per response, or {'scores': [...]}",
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
    tokenizer = _tokenizer(cfg, stage)
    rows = {what: _check_data(cfg, stage, what, tokenizer) for what in DATA_STAGES[stage]}
    if stage in ("ppo", "pipeline") and cfg.ppo.ptx_coef > 0:  # PPO-ptx's texts
        d = cfg.data
        load_pretrain(d.pretrain, tokenizer, cfg.model.max_seq_len, d.split, d.on_bad_row)
    samples = _two_samples(rows)
    for spec in reward_sources(cfg) if scores else []:  # each function entry, called once
        if spec != REWARD_MODEL:
            check_reward_function(spec, samples, cfg)
    if stage == "pipeline" and (cfg.pipeline.iterations > 1 or not cfg.data.rankings):
        human = cfg.pipeline.labeler == "human"
        if not human or cfg.labeling.bots:  # people rank on the service; bots with labeling.bot
            key = "labeling.bot" if human else "pipeline.labeler"
            spec = cfg.labeling.bot if human else cfg.pipeline.labeler
            check_labeler(spec, samples[0][0], cfg.run.timeout_s, key)


def _check_model(cfg: Config, path: str, key: str, role: str) -> None:
    if not Path(path).is_dir():  # a Hub name: read by transformers where it runs
        return
    for line in check_model_folder(path, key, role, trust_remote_code=cfg.model.trust_remote_code):
        logger.warning(line)


def _tokenizer(cfg: Config, stage: str) -> Any:
    from instructray.actors.sequences import load_tokenizer

    path = cfg.model.tokenizer
    key = "model.tokenizer" if path != cfg.model.policy else "model.policy"
    if Path(path).is_dir():
        for line in check_tokenizer(path, key, trust_remote_code=cfg.model.trust_remote_code):
            logger.warning(line)
    tokenizer = load_tokenizer(path, cfg.model.trust_remote_code)
    # Demonstrations and rankings end each response with EOS (orchestrator/data/examples.py):
    # where the model learns an answer stops. Without one the ids hold None, which the
    # learners fail on inside Ray Train.
    if {"demonstrations", "rankings"} & set(DATA_STAGES[stage]) and tokenizer.eos_token_id is None:
        raise PreflightError(
            f"{key}: {path}'s tokenizer has no EOS token, which {stage} appends to every "
            "response it trains on to end the answer: set eos_token in its tokenizer_config.json "
            "(or special_tokens_map.json)"
        )
    return tokenizer


Sample = tuple[str, dict[str, Any]]  # a prompt's text and the columns its row gives rewards


def _check_data(cfg: Config, stage: str, what: str, tokenizer: Any) -> list[Sample]:
    """Load data.<what> as the stage will (every row checked); -> two prompts, with columns."""
    if what == "rankings" and stage == "pipeline" and not cfg.data.rankings:
        return []  # the pipeline ranks the SFT model's samples instead (its labeler is checked)
    if what == "prompts":
        prompts = load_prompt_set(cfg, tokenizer)
        return list(zip(prompts.texts[:2], prompts.columns[:2], strict=True))
    loader = load_demonstrations if what == "demonstrations" else load_rankings
    examples = loader(cfg, tokenizer)
    first = (examples.train or examples.eval)[:2]
    return [(tokenizer.decode(e.prompt_ids, skip_special_tokens=True), {}) for e in first]


def _two_samples(rows: dict[str, list[Sample]]) -> list[Sample]:
    """Two prompts (of two rows where the data has two) for the one call of each reward."""
    for samples in rows.values():
        if samples:
            return (samples * 2)[:2]
    return [("Tell me about the cat.", {}), ("Name a dog.", {})]


RESPONSES = ["The cat sat.", "A dog ran."]  # what the pre-flight asks rewards and labelers about


def check_reward_function(spec: str, samples: list[Sample], cfg: Config) -> None:
    """A reward (a reward.function entry, or `url` for reward.url) loaded as the reward actor
    loads it and called once on two samples of two rows, with their columns; a column it needs
    that the rows lack, a failure or a wrong return is one line."""
    key = "reward.url" if spec == URL_SOURCE else "reward.function"
    if spec == URL_SOURCE:
        token = os.environ.get(cfg.reward.url_token_env, "")
        fn, spec = remote_reward(cfg.reward.url, token), cfg.reward.url
    else:
        fn = load_function(spec, key)
    try:
        reward = RewardFunction(spec, fn, key=key, **reward_call_policy(cfg))
    except ValueError as e:
        raise PreflightError(str(e)) from None
    prompts = [text for text, _ in samples]
    columns = columns_as_lists([c for _, c in samples], len(samples))
    try:
        reward.check_columns(columns)
    except ValueError as e:
        raise PreflightError(str(e)) from None
    timeout_s = cfg.run.timeout_s
    _call_once(reward, spec, key, timeout_s, prompts, RESPONSES, columns)


def check_labeler(spec: str, prompt: str, timeout_s: float, key: str = "pipeline.labeler") -> None:
    """A labeler (pipeline.labeler, labeling.bot) imported and called once as fn(prompt, [two
    responses]), its return checked as the pipeline checks it."""
    fn = load_function(spec, key)
    ranking = _call_once(fn, spec, key, timeout_s, prompt, RESPONSES)
    check_ranking(ranking, len(RESPONSES), f"{key} = {spec!r}")


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
            f"called once on two samples before the run"
        )
    if "error" in out:
        e = out["error"]
        e = e.__cause__ if isinstance(e.__cause__, Exception) else e  # the function's own error
        first = str(e).splitlines()[0] if str(e) else ""
        raise PreflightError(
            f"{key} = {spec!r} failed when called once on two samples: {type(e).__name__}: "
            f"{first[:200]} (expected {SIGNATURES[key]})"
        )
    return out["value"]
