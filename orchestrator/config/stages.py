"""The settings of the stages around PPO: SFT, the reward model, evaluation, the demo's world
and the pipeline (schema.py holds the sections every run shares, and the whole Config)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from instructray.orchestrator.config.fields import param


@dataclass
class RMConfig:
    """Reward-model training from K-wise rankings (InstructGPT step 2)."""

    lr: float = param(1e-5, "Learning rate.", gt=0)
    epochs: int = param(1, "Passes over the rankings.", gt=0)
    batch_size: int = param(
        8, "Prompts per batch; each prompt's C(K,2) pairs are one element.", gt=0
    )


@dataclass
class SFTConfig:
    """Supervised fine-tuning on demonstrations (InstructGPT step 1)."""

    lr: float = param(1e-5, "Learning rate.", gt=0)
    epochs: int = param(1, "Passes over the demonstrations.", gt=0)
    max_tokens_per_batch: int = param(4096, "Token budget per packed batch per rank.", gt=0)
    packing: bool = param(True, "Pack demonstrations into token-budget batches (no padding paid).")
    template: str = param(
        "{prompt}\n", "Plain prompt template used when the tokenizer has no chat template."
    )


@dataclass
class EvalConfig:
    """Held-out evaluation."""

    num_prompts: int = param(64, "Held-out prompts to evaluate.", gt=0)
    max_new_tokens: int = param(32, "Longest evaluated response.", gt=0)
    temperature: float = param(0.7, "Sampling temperature for evaluated responses.", ge=0)


@dataclass
class DemoConfig:
    """The embedded demo's synthetic world (orchestrator/demo/world.py): how much of each text."""

    base_examples: int = param(
        3000, "Dialogues of the world's unfiltered text the base LM sees.", gt=0
    )
    base_epochs: int = param(2, "Passes of the base LM's brief pretraining.", gt=0)
    base_lr: float = param(3e-3, "Learning rate of the base LM's pretraining.", gt=0)
    demonstrations: int = param(400, "Labeler demonstrations for SFT.", gt=0)
    ppo_prompts: int = param(512, "Prompts for PPO (and for the labeler's rankings).", gt=0)
    task: Literal["preference", "verifiable"] = param(
        "preference",
        "preference: base -> SFT -> rankings -> RM -> PPO, judged by the labeler; verifiable: "
        "base -> SFT -> ppo.estimator against an exact-match reward on questions with one right "
        "answer (no RM), judged by accuracy.",
    )
    ptx_coef: float = param(
        0.0,
        "> 0: the preference demo also trains PPO-ptx (the same PPO with ppo.ptx_coef = this, "
        "on the base model's text) and reports its win rate and alignment tax beside PPO's.",
        ge=0,
    )
    ptx_steps: int = param(0, "PPO-ptx's steps; 0 = run.steps, as PPO's.", ge=0)


@dataclass
class PipelineConfig:
    """SFT -> RM -> PPO in one run."""

    iterations: int = param(1, "Times steps 2-3 (rank, RM, PPO) run.", ge=1)
    labeler: str = param(
        "",
        "`module:function` (prompt: str, responses: list[str]) -> list (indices best first, tied "
        "ones in a list) that ranks the current policy's samples between iterations; or `human`: "
        "people rank them on the labeling service (labeling.*) while the run waits.",
    )
    samples_per_prompt: int = param(
        4, "Responses (K, 2..9) sampled per prompt for new rankings.", ge=2, le=9
    )
    min_samples_per_prompt: int = param(
        0,
        "Smallest K kept per prompt (K drawn per prompt up to samples_per_prompt); 0 = fixed K.",
        ge=0,
    )
    rank_prompts: int = param(32, "Prompts sampled for new rankings per iteration.", gt=0)
    ranking_models: list[str] = param(
        [],
        "More model folders (same tokenizer) whose samples join the current policy's in new "
        "rankings, as InstructGPT ranked outputs of several models: e.g. the base model.",
    )


@dataclass
class LabelingConfig:
    """The labeling service of a pipeline whose labeler is `human` (`instructray label ...`)."""

    db: str = param(
        "",
        "Database of rankings: an SQLAlchemy URL (postgresql+psycopg://...) or a path (an "
        "SQLite file); empty: labeling.db in the run folder.",
    )
    serve: Literal["driver", "ray"] = param(
        "driver",
        "Where the service runs: in the pipeline's driver (uvicorn), or on the Ray cluster as a "
        "Ray Serve app (the dashboard's Serve view shows it; an SQLite file's replica runs on "
        "the driver's node).",
    )
    host: str = param("127.0.0.1", "Address the labelers' page listens on (loopback).")
    port: int = param(8600, "Port of the labelers' page (0: any free port).", ge=0, le=65535)
    overlap: int = param(1, "Labelers per task (InstructGPT: mostly 1).", ge=1)
    min_rankings: int = param(
        0,
        "Fresh rankings a round waits for before the reward model retrains; 0: every task to "
        "its overlap (pipeline.rank_prompts x labeling.overlap).",
        ge=0,
    )
    timeout_s: float = param(
        86400.0,
        "Seconds a round waits for its rankings; then the run stops with one line, and "
        "--run.resume=auto waits on (nothing given is lost).",
        gt=0,
    )
    assignment_ttl_s: float = param(
        3600.0,
        "Seconds a labeler's task waits for its ranking before it returns to the pool.",
        gt=0,
    )
    merge: Literal["consensus", "each"] = param(
        "consensus",
        "With overlap > 1: one ranking per prompt merged by ranked pairs (consensus), or every "
        "labeler's ranking as its own row (each).",
    )
    bots: int = param(
        0,
        "Simulated labelers that rank through the service's HTTP API with labeling.bot, as "
        "people would (demos, tests).",
        ge=0,
    )
    bot: str = param("", "`module:function` labeler the bots rank with (pipeline.labeler's form).")
