"""Cross-field checks of a Config; every message carries the numbers that disagree."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re

from instructray.orchestrator.config.fields import describe_range, in_range
from instructray.orchestrator.config.lora import check_lora
from instructray.orchestrator.config.renames import check_function_spec
from instructray.orchestrator.config.schema import Config, ConfigError

STAGES = ("sft", "rm", "ppo", "pipeline", "eval", "demo", "bench", "doctor")
REWARD_MODEL = "model"  # the entry of reward.function that names the reward model
_FUNCTION_SPEC = re.compile(r"([A-Za-z_][\w.]*|[^,]+\.py):[A-Za-z_]\w*")
URL_SOURCE = "url"  # reward.url among the rewards (reward/url/mean)


def _check_ranges(cfg: Config, errors: list[str]) -> None:
    """Every number of every section: finite, and inside the range its field declares
    (`param(gt=.., ge=.., lt=.., le=..)` in schema.py); null passes where a field allows it."""
    for section in dataclasses.fields(cfg):
        values = getattr(cfg, section.name)
        for f in dataclasses.fields(values):
            value, key = getattr(values, f.name), f"{section.name}.{f.name}"
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(value):
                errors.append(f"{key} must be a finite number, got {value}")
                continue
            bounds = f.metadata.get("range", {})
            if bounds and not in_range(value, bounds):
                where = describe_range(bounds)
                verb = "lie" if where.startswith("in ") else "be"
                null = " (or null)" if f.default is None else ""
                errors.append(f"{key} must {verb} {where}{null}, got {value}")


def one_step_per_batch(cfg: Config) -> bool:
    """Whether the policy and the critic step once per rollout batch (ppo_epochs 1, each rank's
    rows one minibatch): their training forwards then see the weights a rollout-time forward
    would."""
    r, p = cfg.rollout, cfg.ppo
    rows = r.prompts_per_step * r.samples_per_prompt
    return p.ppo_epochs == 1 and rows == p.minibatch_size * cfg.learner.num_ranks


def needs_critic(cfg: Config) -> bool:
    """Whether the run has a critic: PPO's GAE needs values; the other estimators take their
    baseline from the samples (a prompt's group, or the batch)."""
    return cfg.ppo.estimator == "gae"


def parse_reward_sources(function: str, url: str = "") -> list[str]:
    """The rewards in order: reward.function's entries, `model` (the reward model) or a
    function spec, then `url` when reward.url is set; both empty means the reward model alone."""
    entries = [entry.strip() for entry in function.split(",")] if function.strip() else []
    if url:
        return entries + [URL_SOURCE]
    return entries or [REWARD_MODEL]


def reward_sources(cfg: Config) -> list[str]:
    """The rewards a PPO run's score is the weighted sum of (reward.function and reward.url)."""
    return parse_reward_sources(cfg.reward.function, cfg.reward.url)


def reward_call_policy(cfg: Config) -> dict[str, float]:
    """How an async reward function (or reward.url) is called: RewardFunction's arguments."""
    r = cfg.reward
    return {
        "max_concurrency": r.max_concurrency,
        "timeout_s": r.timeout_s,
        "retries": r.retries,
        "call_batch_size": r.call_batch_size,
    }


def uses_reward_model(cfg: Config) -> bool:
    """Whether the run loads the reward model at model.reward (reward.function empty, or one of
    its entries is `model`)."""
    return REWARD_MODEL in reward_sources(cfg)


def _check_rewards(cfg: Config, errors: list[str]) -> None:
    """reward.function's entries and reward.weights, one weight per entry."""
    sources, weights, url = reward_sources(cfg), cfg.reward.weights, cfg.reward.url
    if url and not re.fullmatch(r"https?://\S+", url):
        errors.append(f"reward.url must be an http:// or https:// address, got {url!r}")
    for entry in sources[:-1] if url else sources:
        if entry != REWARD_MODEL and not _FUNCTION_SPEC.fullmatch(entry):
            errors.append(
                f"reward.function entry '{entry}' must be {REWARD_MODEL} (the reward model) or "
                f"look like module:function or path/to/file.py:function"
            )
        elif entry != REWARD_MODEL and (moved := check_function_spec("reward.function", entry)):
            errors.append(moved)
    repeated = sorted({e for e in sources if sources.count(e) > 1})
    if repeated:
        errors.append(f"reward.function names {', '.join(map(repr, repeated))} more than once")
    names = [e.rpartition(":")[2] or e for e in sources]
    clashes = sorted({n for n in names if names.count(n) > 1} - set(repeated))
    if clashes:
        errors.append(
            f"reward.function: two entries have the function name {clashes[0]!r} (each reward "
            f"is logged as reward/<name>/mean); import one under another name"
        )
    if weights and len(weights) != len(sources):
        errors.append(
            f"reward.weights has {len(weights)} weights for the {len(sources)} entries of "
            f"reward.function ('{cfg.reward.function}'){' and reward.url' if url else ''}; give "
            f"one per entry, or none (1 each)"
        )
    for i, w in enumerate(weights):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            errors.append(f"reward.weights[{i}] must be a finite number, got {w}")
    if cfg.data.prompt_map and not _FUNCTION_SPEC.fullmatch(cfg.data.prompt_map):
        errors.append(
            f"data.prompt_map must look like module:function or path/to/file.py:function, got "
            f"{cfg.data.prompt_map!r}"
        )
    if not cfg.data.prompt_field.strip():
        errors.append("data.prompt_field must name a column (default: prompt)")


def gae_in_learner(cfg: Config) -> bool:
    """The one data-flow decision of PPO: whether GAE runs in the learner, on the values of the
    critic's own training forward (ppo.old_values: train, or auto with one critic step per
    rollout batch), instead of on the driver with rollout-time values."""
    mode = cfg.ppo.old_values
    if not needs_critic(cfg):
        return False
    return mode == "train" or (mode == "auto" and one_step_per_batch(cfg))


def old_logprobs_in_train(cfg: Config) -> bool:
    """Whether the policy's training forward gives the old log-probs (ppo.old_logprobs: train,
    or auto where the policy steps once per batch and the rewards hold no KL): the scoring
    phase then runs no policy forward, as TRL and veRL skip it."""
    mode = cfg.ppo.old_logprobs
    fits = one_step_per_batch(cfg) and not cfg.ppo.kl_in_reward
    return mode == "train" or (mode == "auto" and fits)


def _check_ppo(cfg: Config, errors: list[str]) -> None:
    from instructray.kernels import (
        GROUP_ESTIMATORS,  # the kernels' own list (imports torch: here only)
    )

    r, p, learner = cfg.rollout, cfg.ppo, cfg.learner
    if p.estimator in GROUP_ESTIMATORS and r.samples_per_prompt < 2:
        errors.append(
            f"ppo.estimator = {p.estimator} takes each prompt's baseline from its other samples: "
            f"rollout.samples_per_prompt must be >= 2, got {r.samples_per_prompt}"
        )
    if p.ptx_coef > 0 and not cfg.data.pretrain:
        errors.append(
            f"ppo.ptx_coef = {p.ptx_coef} (PPO-ptx) needs data.pretrain: a {{text}} file, a Hub "
            f"data set or tiny://pretrain"
        )
    if p.old_values == "train" and not needs_critic(cfg):
        errors.append(
            f"ppo.old_values = train: ppo.estimator = {p.estimator} has no critic (use auto)"
        )
    elif p.old_values == "train" and not one_step_per_batch(cfg):
        errors.append(
            f"ppo.old_values = train needs one critic step per rollout batch: ppo.ppo_epochs = 1 "
            f"(got {p.ppo_epochs}) and rollout.prompts_per_step x rollout.samples_per_prompt = "
            f"ppo.minibatch_size x learner.num_ranks (got {r.prompts_per_step} x "
            f"{r.samples_per_prompt} and {p.minibatch_size} x {learner.num_ranks})"
        )
    if p.old_logprobs == "train" and p.kl_in_reward:
        errors.append(
            "ppo.old_logprobs = train: the rewards' KL (ppo.kl_in_reward) needs the old "
            "log-probs before the step; set ppo.kl_in_reward false, or use auto"
        )
    elif p.old_logprobs == "train" and not one_step_per_batch(cfg):
        errors.append(
            f"ppo.old_logprobs = train needs one policy step per rollout batch: ppo.ppo_epochs "
            f"= 1 (got {p.ppo_epochs}) and rollout.prompts_per_step x rollout.samples_per_prompt "
            f"= ppo.minibatch_size x learner.num_ranks (got {r.prompts_per_step} x "
            f"{r.samples_per_prompt} and {p.minibatch_size} x {learner.num_ranks})"
        )
    rollout_batch = r.prompts_per_step * r.samples_per_prompt
    per_step = p.minibatch_size * learner.num_ranks
    if per_step > 0 and rollout_batch % per_step:
        errors.append(
            f"rollout batch = rollout.prompts_per_step x rollout.samples_per_prompt = "
            f"{r.prompts_per_step} x {r.samples_per_prompt} = {rollout_batch} is not divisible by "
            f"ppo.minibatch_size x learner.num_ranks = {p.minibatch_size} x {learner.num_ranks} "
            f"= {per_step}"
        )
    if learner.micro_batch_size > 0 and p.minibatch_size % learner.micro_batch_size:
        errors.append(
            f"ppo.minibatch_size = {p.minibatch_size} is not divisible by "
            f"learner.micro_batch_size = {learner.micro_batch_size}"
        )
    if r.num_engines > r.prompts_per_step:
        errors.append(
            f"rollout.num_engines = {r.num_engines} exceeds rollout.prompts_per_step = "
            f"{r.prompts_per_step}: some engines would get no prompts"
        )
    _check_pool(cfg, errors)
    _check_staleness(cfg, errors)
    longest = cfg.data.max_prompt_tokens + r.max_new_tokens
    if longest > cfg.model.max_seq_len:
        errors.append(
            f"data.max_prompt_tokens + rollout.max_new_tokens = {cfg.data.max_prompt_tokens} + "
            f"{r.max_new_tokens} = {longest} exceeds model.max_seq_len = {cfg.model.max_seq_len}"
        )
    if r.weight_sync == "nccl" and not cfg.learner.gpus_per_rank:
        errors.append(
            "rollout.weight_sync = nccl needs GPUs but learner.gpus_per_rank = 0; use gloo or "
            "object_store on CPU"
        )


def max_engines(cfg: Config) -> int:
    """The most engines the run's pool may hold: rollout.max_engines with autoscale (0 =
    num_engines), else num_engines (`instructray scale` may go past it, as the cluster allows)."""
    r = cfg.rollout
    return (r.max_engines or r.num_engines) if r.autoscale else r.num_engines


def _check_staleness(cfg: Config, errors: list[str]) -> None:
    """Pipelined generation weights stale samples by pi_learner / pi_engine: the engines'
    log-probs must be those of the sampling distribution."""
    r = cfg.rollout
    if r.max_staleness and not (r.temperature == 1.0 and r.top_p == 1.0 and r.top_k == -1):
        errors.append(
            f"rollout.max_staleness = {r.max_staleness} corrects stale samples with the engines' "
            f"log-probs of the sampling distribution: it needs rollout.temperature 1, top_p 1 "
            f"and top_k -1, got {r.temperature}, {r.top_p} and {r.top_k}"
        )


def _check_pool(cfg: Config, errors: list[str]) -> None:
    """With rollout.autoscale: min_engines <= num_engines <= max_engines <= prompts_per_step."""
    r = cfg.rollout
    if not r.autoscale:
        return
    most = max_engines(cfg)
    if not r.min_engines <= r.num_engines <= most:
        errors.append(
            f"rollout.autoscale needs rollout.min_engines <= rollout.num_engines <= "
            f"rollout.max_engines, got {r.min_engines} <= {r.num_engines} <= {most}"
        )
    if most > r.prompts_per_step:
        errors.append(
            f"rollout.max_engines = {most} exceeds rollout.prompts_per_step = "
            f"{r.prompts_per_step}: some engines would get no prompts"
        )


def _check_gpus(cfg: Config, errors: list[str]) -> None:
    """GPU arithmetic every stage relies on. A run is on GPUs when learner.gpus_per_rank > 0."""
    learner, r = cfg.learner, cfg.rollout
    gpus = learner.gpus_per_rank
    if math.isfinite(gpus) and gpus != int(gpus):
        # Two ranks with half a GPU each may share one device, and NCCL refuses two ranks of a
        # group on one device. run.colocate shares GPUs among roles by itself.
        errors.append(
            f"learner.gpus_per_rank = {gpus} is not a whole number of GPUs: ranks could share a "
            f"device, which NCCL refuses; use 0 (CPU) or 1 (run.colocate shares GPUs among the "
            f"roles itself)"
        )
    elif gpus > 1:
        # A rank computes on cuda:0 of the GPUs Ray gives it (LOCAL_RANK 0): the rest sit idle.
        errors.append(
            f"learner.gpus_per_rank = {gpus:g}: a rank computes on one GPU, the others would sit "
            f"idle; use 1 and more learner.num_ranks"
        )
    tp = r.tensor_parallel_size
    if tp > 1 and gpus <= 0:
        errors.append(
            f"rollout.tensor_parallel_size = {tp} needs GPUs but learner.gpus_per_rank = {gpus} "
            f"(the run is on CPU); use 1 on CPU"
        )
    if learner.backend == "nccl" and gpus <= 0:
        errors.append(
            f"learner.backend = nccl needs GPUs but learner.gpus_per_rank = {gpus}; use gloo or "
            f"auto on CPU"
        )


def _check_attention(cfg: Config, errors: list[str]) -> None:
    """flash_attention_2 needs GPUs and the flash-attn package. The package is checked here
    only where the driver is a GPU node (of the image the actors run): a driver without GPUs
    (a KubeRay head) may lack it while the GPU nodes have it, and the scorers check at start."""
    if cfg.model.attn_implementation != "flash_attention_2":
        return
    if cfg.learner.gpus_per_rank <= 0:
        errors.append(
            "model.attn_implementation = flash_attention_2 needs GPUs but learner.gpus_per_rank "
            "= 0; use sdpa or auto on CPU"
        )
        return
    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is None:
        errors.append(
            "model.attn_implementation = flash_attention_2 needs the flash-attn package, which "
            "this GPU node lacks (pip install flash-attn); or use sdpa"
        )


def _check_colocated_gpus(cfg: Config, errors: list[str]) -> None:
    """run.colocate on GPUs: actor i of every role shares bundle i's one GPU, a fraction each."""
    r, gpus = cfg.rollout, cfg.learner.gpus_per_rank
    if not (cfg.run.colocate and gpus > 0):
        return
    if r.tensor_parallel_size != 1 or gpus != 1:
        errors.append(
            f"run.colocate shares one GPU among one actor of each role: needs "
            f"rollout.tensor_parallel_size = 1 and learner.gpus_per_rank = 1, got "
            f"{r.tensor_parallel_size} and {gpus}"
        )
    if r.weight_sync == "nccl":
        errors.append(
            "rollout.weight_sync = nccl with run.colocate puts learner rank 0 and rollout engine 0 "
            "on the same GPU, which NCCL refuses; use object_store"
        )


def validate_config(cfg: Config, stage: str) -> Config:
    """Raise ConfigError listing every inconsistency of cfg for the given stage; -> cfg."""
    if stage not in STAGES:
        raise ConfigError(f"unknown stage '{stage}', expected one of {', '.join(STAGES)}")
    errors: list[str] = []
    _check_ranges(cfg, errors)
    if cfg.learner.zero_stage not in (0, 1, 2, 3):
        errors.append(f"learner.zero_stage must be 0, 1, 2 or 3, got {cfg.learner.zero_stage}")
    if stage in ("ppo", "pipeline", "demo", "bench") and cfg.run.steps < 1:
        errors.append(f"run.steps must be >= 1 for {stage} (its PPO steps), got {cfg.run.steps}")
    _check_rewards(cfg, errors)
    if cfg.run.wandb_project and importlib.util.find_spec("wandb") is None:
        errors.append(
            f"run.wandb_project = '{cfg.run.wandb_project}' but wandb is not installed: "
            f"pip install 'instructray[wandb]', or leave run.wandb_project empty"
        )
    _check_gpus(cfg, errors)
    _check_attention(cfg, errors)
    check_lora(cfg, errors)
    if stage in ("ppo", "pipeline", "demo", "bench"):
        _check_ppo(cfg, errors)
        _check_colocated_gpus(cfg, errors)
    if stage in ("sft", "pipeline"):
        if not cfg.data.demonstrations:
            errors.append("data.demonstrations is empty: give a file or a Hub data set")
    if stage in ("rm", "pipeline"):
        ranks = ":" in cfg.pipeline.labeler or cfg.pipeline.labeler == "human"
        if not cfg.data.rankings and (stage == "rm" or not ranks):
            hint = (
                ", or a pipeline.labeler to rank the SFT model's samples" if stage != "rm" else ""
            )
            errors.append(f"data.rankings is empty: give a file or a Hub data set{hint}")
    if stage in ("pipeline", "demo") and cfg.run.resume not in ("", "auto"):
        errors.append(
            f"run.resume = {cfg.run.resume}: a {stage} resumes with auto (finished stages are "
            f"kept, a stopped PPO stage continues from its latest checkpoint)"
        )
    for key, spec in (
        ("pipeline.labeler", cfg.pipeline.labeler),
        ("labeling.bot", cfg.labeling.bot),
    ):
        if ":" in spec and (moved := check_function_spec(key, spec)):
            errors.append(moved)
    if stage == "pipeline":
        pl = cfg.pipeline
        if pl.iterations > 1 and ":" not in pl.labeler and pl.labeler != "human":
            errors.append(
                f"pipeline.iterations = {pl.iterations} needs pipeline.labeler (module:function, "
                f"or human) to rank new samples, got '{pl.labeler}'"
            )
        if pl.labeler == "human" and cfg.labeling.bots and ":" not in cfg.labeling.bot:
            errors.append(
                f"labeling.bots = {cfg.labeling.bots} needs labeling.bot (module:function) to "
                f"rank with, got '{cfg.labeling.bot}'"
            )
        k_min = pl.min_samples_per_prompt
        if k_min and not 2 <= k_min <= pl.samples_per_prompt:
            errors.append(
                f"pipeline.min_samples_per_prompt must lie in [2, pipeline.samples_per_prompt = "
                f"{pl.samples_per_prompt}], got {k_min}"
            )
    if errors:
        raise ConfigError("; ".join(errors))
    return cfg
