"""Starting the actors of a PPO run: rollout engines, reward and reference scorers, the learner."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import ray

from instructray.actors.learner.group import LearnerGroup
from instructray.actors.remote import wait_all
from instructray.actors.rollout.actor import RolloutActor
from instructray.actors.scoring.scorers import ReferenceActor, RewardActor
from instructray.actors.sequences import load_tokenizer
from instructray.orchestrator.cluster import Placement, connect, on_gpu
from instructray.orchestrator.config import Config, reward_call_policy, reward_sources
from instructray.orchestrator.config.functions import read_files
from instructray.orchestrator.config.lora import adapter_sync, engine_lora_rank
from instructray.orchestrator.data import PromptSampler, PromptSet, load_pretrain, load_prompt_set
from instructray.orchestrator.model_specs import resolve_models

logger = logging.getLogger(__name__)


@dataclass
class Roles:
    """Handles to every actor of a PPO run, plus the driver-side tokenizer and prompts."""

    cfg: Config
    tokenizer: Any
    prompts: PromptSet
    sampler: PromptSampler
    placement: Placement
    engines: list[Any]
    rewards: list[Any]
    references: list[Any]
    learner: LearnerGroup
    pretrain: list[list[int]] | None  # PPO-ptx's tokenized texts (ppo.ptx_coef > 0)

    @classmethod
    def start(cls, cfg: Config) -> Roles:
        """Resolve models and data, reserve placement groups, start and wait for every actor."""
        resolve_models(cfg)
        tokenizer = load_tokenizer(cfg.model.tokenizer, cfg.model.trust_remote_code)
        prompts = load_prompt_set(cfg, tokenizer)
        sampler = PromptSampler(
            len(prompts), cfg.rollout.prompts_per_step, cfg.run.seed, cfg.data.shuffle
        )
        d, pretrain = cfg.data, None
        if cfg.ppo.ptx_coef > 0:
            pretrain = load_pretrain(
                d.pretrain, tokenizer, cfg.model.max_seq_len, d.split, d.on_bad_row
            )
        where = connect(cfg)
        logger.info("ray: %s", where)
        placement = Placement(cfg)
        slots = placement.slots
        engines = [start_engine(cfg, s.options()) for s in slots["rollout"]]
        engine_names = [f"rollout engine {i}" for i in range(len(engines))]
        if engines_first(cfg):
            wait_ready(cfg, engines, engine_names)
        rewards = [start_reward(cfg, s.options()) for s in slots["reward"]]
        references = [start_reference(cfg, s.options()) for s in slots.get("reference", [])]
        learner = LearnerGroup(cfg, [s.options() for s in slots["learner"]], pretrain)
        # Constructors run in the actors; `ready` surfaces their errors with the role named.
        wait_ready(
            cfg,
            engines + rewards + references,
            engine_names
            + [f"reward {i}" for i in range(len(rewards))]
            + [f"reference {i}" for i in range(len(references))],
        )
        return cls(
            cfg,
            tokenizer,
            prompts,
            sampler,
            placement,
            engines,
            rewards,
            references,
            learner,
            pretrain,
        )

    def shutdown(self) -> None:
        """Stop exactly the actors and placement groups this run started."""
        self.learner.shutdown()
        for actor in self.engines + self.rewards + self.references:
            ray.kill(actor)
        self.placement.remove()


def engines_first(cfg: Config) -> bool:
    """Whether the engines must be built before any other role starts: colocated on GPUs. vLLM
    sizes its KV cache from the GPU's free memory while it profiles, so memory another role
    takes or frees on the same GPU in that window shrinks the cache or fails its start."""
    return cfg.run.colocate and on_gpu(cfg)


def wait_ready(cfg: Config, actors: list[Any], names: list[str]) -> None:
    """Wait for the actors' constructors (within run.start_timeout_s); the first error raises,
    naming its actor."""
    refs = [a.__ray_ready__.remote() for a in actors]
    wait_all(refs, "start", names, cfg.run.start_timeout_s)


def start_engine(cfg: Config, options: dict[str, Any]) -> Any:
    """One rollout engine (a vLLM RolloutActor) with the run's settings; returns at once."""
    m, r = cfg.model, cfg.rollout
    return (
        ray.remote(RolloutActor)
        .options(**options, name=None)
        .remote(
            m.policy,
            dtype=m.dtype,
            max_model_len=m.max_seq_len,
            seed=cfg.run.seed,
            kv_cache_gib=r.kv_cache_gib,
            enforce_eager=r.enforce_eager,
            tensor_parallel_size=r.tensor_parallel_size,
            gpu_memory_utilization=r.gpu_memory_utilization,
            max_lora_rank=engine_lora_rank(cfg.learner.lora_rank) if adapter_sync(cfg) else 0,
        )
    )


def start_reward(cfg: Config, options: dict[str, Any]) -> Any:
    """One reward scorer (the reward model, reward functions, or their weighted sum); returns
    at once."""
    m, r = cfg.model, cfg.reward
    return (
        ray.remote(RewardActor)
        .options(**options)
        .remote(
            m.reward,
            r.function,
            m.tokenizer,
            m.dtype,
            batch_size=r.batch_size,
            normalize=r.normalize,
            attn_implementation=m.attn_implementation,
            weights=list(r.weights),
            url=r.url,
            url_token=os.environ.get(r.url_token_env, "") if r.url else "",
            files=read_files(reward_sources(cfg)),  # reward files travel as text to any node
            calls=reward_call_policy(cfg),
        )
    )


def start_reference(cfg: Config, options: dict[str, Any]) -> Any:
    """One frozen reference-policy scorer; returns at once."""
    m = cfg.model
    return (
        ray.remote(ReferenceActor)
        .options(**options)
        .remote(
            m.reference,
            m.dtype,
            batch_size=cfg.reference.batch_size,
            chunk_size=cfg.reference.logprob_chunk_size,
            temperature=cfg.rollout.temperature,
            attn_implementation=m.attn_implementation,
        )
    )
