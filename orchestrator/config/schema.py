"""The one source of truth for settings: nested dataclasses, a docstring per field and, for a
number, its range (`param`, fields.py); the stages around PPO have their sections in stages.py.

YAML files and `--section.key=value` overrides only set fields that exist here (load.py);
`validate_config` (checks.py) checks every number against its range and the arithmetic that
ties sections together, with the numbers in its messages.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from instructray.orchestrator.config.fields import param
from instructray.orchestrator.config.rollout import RolloutConfig
from instructray.orchestrator.config.stages import (
    DemoConfig,
    EvalConfig,
    LabelingConfig,
    PipelineConfig,
    RMConfig,
    SFTConfig,
)

# The attention and MLP projections of the common decoder families (Llama, Qwen, Mistral, Gemma).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class ConfigError(ValueError):
    """A bad config file, key, value or combination; the message is one line for the user."""


@dataclass
class ModelConfig:
    """Which weights each role loads."""

    policy: str = param(
        "tiny://policy",
        "Policy to train (the SFT model for PPO): a local HF folder, a Hub name, or tiny://policy "
        "(a tiny model built on the fly, no download).",
    )
    reward: str = param(
        "tiny://reward",
        "Reward model (HF sequence-classification folder, or tiny://reward). Also initializes the "
        "critic. Ignored when reward.function is set without a `model` entry.",
    )
    reference: str = param("", "Frozen reference (SFT) policy for the KL penalty; empty = policy.")
    tokenizer: str = param("", "Tokenizer folder or name; empty = the policy's.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = param(
        "auto",
        "Weights and compute dtype of every role (the learner keeps fp32 master weights and "
        "optimizer state). auto = bfloat16 on a GPU with bf16 or a CPU with AVX512-BF16 or AMX "
        "(read from its flags), else float32; the run logs which and why.",
    )
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2"] = param(
        "auto",
        "transformers' attention in the learner, the scorers, SFT and the RM (the engines use "
        "vLLM's own). auto = eager in bf16 on a CPU (torch's SDPA backward is slow there), else "
        "sdpa; flash_attention_2 needs the flash-attn package and a GPU.",
    )
    max_seq_len: int = param(256, "Context length: prompt tokens + response tokens.", gt=0)
    trust_remote_code: bool = param(False, "Allow model code from the model folder (off: safer).")
    tiny_dir: str = param(
        "", "Where tiny:// models are built and cached; empty = ~/.cache/instructray/tiny."
    )

    def attention(self, on_gpu: bool) -> tuple[str, str]:
        """-> (attn_implementation, why), auto decided for this dtype: on a CPU in bf16 torch's
        SDPA backward is slow (measured on 2 cores at 30M: 0.41 s of a 2.9-3.2 s learner step,
        which took 2.2-2.8 s with eager attention); in fp32 the two were level."""
        if self.attn_implementation != "auto":
            return self.attn_implementation, "model.attn_implementation"
        if self.dtype == "bfloat16" and not on_gpu:
            return "eager", "bf16 on a CPU, where torch's SDPA backward is slow"
        return "sdpa", "torch's fused attention"


@dataclass
class DataConfig:
    """Where prompts, demonstrations and rankings come from (row formats: docs/guides/sft.md,
    reward-model.md, your-own-task.md)."""

    prompts: str = param(
        "tiny://prompts",
        "PPO prompts: JSONL/JSON/Parquet/CSV file, Hub data set name, or tiny://prompts.",
    )
    demonstrations: str = param(
        "tiny://demonstrations",
        "SFT demonstrations: {prompt, response} or {messages} rows (file, Hub data set, or "
        "tiny://demonstrations).",
    )
    rankings: str = param(
        "tiny://rankings",
        "RM rankings: {prompt, responses, ranking} or {prompt, chosen, rejected} rows (file, Hub "
        "data set, or tiny://rankings); see data.rankings_format for public formats.",
    )
    split: str = param("train", "Split to read from a Hub data set or a multi-split folder.")
    eval_fraction: float = param(
        0.05, "Share of rows held out for evaluation (split by user id).", ge=0, lt=1
    )
    max_prompt_tokens: int = param(
        64, "Longest prompt in tokens; longer prompts are bad rows.", gt=0
    )
    on_bad_row: Literal["error", "skip"] = param(
        "error", "A bad row stops the run (error) or is skipped and counted (skip)."
    )
    shuffle: bool = param(True, "Shuffle prompts each epoch (seeded by run.seed).")
    rankings_format: Literal["auto", "hh-rlhf", "oasst1"] = param(
        "auto",
        "Format of data.rankings: auto (the row formats of docs/guides/reward-model.md), "
        "hh-rlhf (Anthropic HH-RLHF chosen/rejected dialogues) or oasst1 (OpenAssistant OASST1 "
        "message trees).",
    )
    prompt_field: str = param(
        "prompt",
        "Column of data.prompts that holds the prompt: text, or a list of {role, content} "
        "messages (e.g. question for GSM8K's {question, answer} rows).",
    )
    prompts_format: Literal["auto", "hh-rlhf", "oasst1"] = param(
        "auto",
        "Format of data.prompts: auto ({prompt} or {messages} rows, or data.prompt_field), "
        "hh-rlhf (HH-RLHF chosen/rejected dialogues: the dialogue before the final reply, as "
        "messages) or oasst1 (OASST1 message trees: each ranked prompter message's thread).",
    )
    prompt_map: str = param(
        "",
        "A function `module:fn` or `path/to/file.py:fn` that maps each data.prompts row to a "
        "row of the prompt schema (fn(row) -> row), applied first; empty = none.",
    )
    user_field: str = param("user_id", "Row field naming the user who wrote the prompt.")
    max_prompts_per_user: int = param(
        200,
        "Keep at most this many prompts per user id (InstructGPT: 200); 0 = no cap.",
        ge=0,
    )
    dedup_prefix_chars: int = param(
        0,
        "Drop a prompt whose first N characters match an earlier one's; 0 = off.",
        ge=0,
    )
    pretrain: str = param(
        "",
        "Pretraining text for PPO-ptx (ppo.ptx_coef): {text} rows (JSONL/JSON/Parquet/CSV file, "
        "Hub data set) or tiny://pretrain (the tiny prompts' world text).",
    )
    drop_pii: bool = param(
        True,
        "Drop prompts with personal data (e-mail, phone, card numbers; more if a detector "
        "is installed).",
    )


@dataclass
class RewardConfig:
    """Reward scorers: a reward model, or a Python reward function."""

    function: str = param(
        "",
        "Python reward `module:function` or `path/to/file.py:function` (the file travels with "
        "the run to every node), called as fn(prompts, responses, **columns) -> list of floats: "
        "prompts are the formatted prompts (after the chat template), each other column of the "
        "prompt's row arrives as a list with one value per response, raw_prompts the rows' own "
        "prompts; an `async def` is called concurrently (reward.max_concurrency). When set, no "
        "reward model is loaded. Several rewards: a comma-separated list, where `model` names "
        "the reward model (model.reward), e.g. "
        "`model, instructray.actors.scoring.rule_rewards:brevity`.",
    )
    url: str = param(
        "",
        "A remote reward endpoint (http or https): POSTed JSON {prompts, responses, <columns>}, "
        "it answers a JSON list of scores (or {scores: [...]}); one more reward beside "
        "reward.function (logged as reward/url/mean), called like an async function.",
    )
    url_token_env: str = param(
        "INSTRUCTRAY_REWARD_TOKEN",
        "Environment variable (read where the run starts) holding a bearer token for reward.url; "
        "unset = no Authorization header.",
    )
    max_concurrency: int = param(
        8, "Calls of an async reward function (or reward.url) in flight at once, per actor.", gt=0
    )
    timeout_s: float = param(
        60.0, "Seconds one call of an async reward function (or reward.url) may take.", gt=0
    )
    retries: int = param(
        2,
        "Tries after the first of a failed or timed-out async reward call; then the run stops "
        "with one line naming the reward and its last error.",
        ge=0,
    )
    call_batch_size: int = param(
        1,
        "Responses per call of an async reward function or reward.url; 0 = all of an actor's "
        "share in one call.",
        ge=0,
    )
    weights: list[float] = param(
        [],
        "Weight of each reward in reward.function, in its order (the score is their weighted "
        "sum, each logged as reward/<name>/mean); empty = 1 each.",
    )
    num_actors: int = param(1, "Number of reward scorer actors.", gt=0)
    placement_strategy: Literal["PACK", "SPREAD"] = param(
        "PACK",
        "Placement-group strategy for the reward actors: PACK on as few nodes as possible, "
        "SPREAD one per node where there is room (a reward that calls a service on each node).",
    )
    batch_size: int = param(16, "Sequences per reward-model forward.", gt=0)
    normalize: bool = param(False, "Normalize scores with the RM's saved mean/std.")
    cpus_per_actor: float = param(1.0, "CPUs reserved per reward actor (its torch threads).", ge=0)
    clip: float | None = param(None, "Clip scores to [-clip, clip] after normalization.", gt=0)


@dataclass
class ReferenceConfig:
    """Frozen reference (SFT) policy scorers."""

    num_actors: int = param(1, "Number of reference scorer actors.", gt=0)
    batch_size: int = param(16, "Sequences per reference forward.", gt=0)
    logprob_chunk_size: int = param(
        1024, "Token rows per chunk of the chunked log-prob kernel.", gt=0
    )
    cpus_per_actor: float = param(
        1.0, "CPUs reserved per reference actor (its torch threads).", ge=0
    )
    source: Literal["auto", "actor", "policy_base"] = param(
        "auto",
        "Where ref_logprobs come from: reference actors holding model.reference (actor), or the "
        "learner's policy with its LoRA adapters switched off (policy_base: one model in memory, "
        "no reference actor; needs learner.lora_rank > 0). auto = policy_base with LoRA when "
        "model.reference is empty or the policy, else actor.",
    )


@dataclass
class LearnerConfig:
    """DeepSpeed ZeRO ranks that train the policy and the critic (and SFT, RM)."""

    num_ranks: int = param(
        1,
        "Data-parallel ranks (one Ray actor each, one torch.distributed group).",
        gt=0,
    )
    zero_stage: int = param(2, "DeepSpeed ZeRO stage, 0-3.")
    offload: bool = param(False, "Offload optimizer state (and params under ZeRO-3) to CPU.")
    gradient_checkpointing: bool = param(False, "Recompute activations in backward to save memory.")
    lr: float = param(1e-5, "Policy learning rate (AdamW).", gt=0)
    critic_lr: float = param(1e-5, "Critic learning rate (AdamW).", gt=0)
    weight_decay: float = param(0.0, "AdamW weight decay.", ge=0)
    adam_eps: float = param(1e-8, "AdamW epsilon (added to the root of the second moment).", gt=0)
    warmup_steps: int = param(0, "Linear warm-up optimizer steps.", ge=0)
    max_grad_norm: float = param(1.0, "Gradient clipping norm.", ge=0)
    micro_batch_size: int = param(4, "Sequences per forward/backward per rank.", gt=0)
    max_tokens_per_batch: int = param(
        0,
        "PPO's forwards and backwards per rank in token budgets instead (the peers' dynamic "
        "batch size): a minibatch's rows grouped by length into micro-batches of at most this "
        "many tokens (rows x longest prompt + longest response); 0: micro_batch_size rows each. "
        "Every micro-batch drops the columns that are padding in all its rows either way.",
        ge=0,
    )
    ptx_batch_size: int = param(
        4, "Pretraining sequences per policy optimizer step per rank (PPO-ptx).", gt=0
    )
    backend: Literal["auto", "gloo", "nccl"] = param(
        "auto", "torch.distributed backend; auto = nccl on GPU, gloo on CPU."
    )
    cpus_per_rank: float = param(1.0, "CPUs reserved per rank (its torch threads).", ge=0)
    gpus_per_rank: float = param(0.0, "GPUs per rank; 0 on CPU.", ge=0)
    lora_rank: int = param(
        0,
        "Rank of the LoRA adapters (PEFT) that the policy, SFT and the RM train instead of all "
        "their weights: only adapters train and hold optimizer state; 0 = off (full fine-tune).",
        ge=0,
    )
    lora_alpha: float = param(16.0, "LoRA scale: an adapter adds (alpha / rank) x B A.", gt=0)
    lora_dropout: float = param(0.0, "Dropout on the adapters' input in training.", ge=0, lt=1)
    lora_targets: list[str] = param(
        list(LORA_TARGETS),
        "Modules that get adapters, by name (the Llama / Qwen / Mistral / Gemma projections by "
        "default); [all-linear] = every linear layer but the output head.",
    )
    critic_lora: bool = param(
        False, "The critic trains LoRA adapters (and its value head) too, not all its weights."
    )


@dataclass
class PPOConfig:
    """PPO with a per-token KL penalty against the reference (InstructGPT step 3)."""

    ppo_epochs: int = param(1, "Passes over each rollout batch.", gt=0)
    minibatch_size: int = param(8, "Sequences per optimizer step per rank.", gt=0)
    clip_eps: float = param(0.2, "Policy ratio clip epsilon.", gt=0)
    dual_clip: float | None = param(None, "Dual-clip constant c > 1 for negative advantages.", gt=1)
    value_clip: float | None = param(
        0.2, "Value clip around the rollout values; null = no clip.", gt=0
    )
    vf_coef: float = param(0.5, "Weight of the value loss.", ge=0)
    entropy_coef: float = param(0.0, "Weight of the entropy bonus.", ge=0)
    gamma: float = param(1.0, "Discount factor.", ge=0, le=1)
    lam: float = param(0.95, "GAE lambda.", ge=0, le=1)
    estimator: Literal[
        "gae", "grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"
    ] = param(
        "gae",
        "Advantage estimator: gae (PPO with a critic, InstructGPT); critic-free: grpo "
        "((r - group mean) / group std), dr_grpo (r - group mean), rloo (r - mean of the "
        "prompt's other samples), reinforce_pp (KL-shaped returns whitened over the batch), "
        "reinforce_pp_baseline (r - group mean, then whitened). A group is the "
        "rollout.samples_per_prompt samples of one prompt; r sums a row's token rewards.",
    )
    kl_in_reward: bool = param(
        True, "Put -kl_coef x KL in the token rewards (InstructGPT); false: the score alone."
    )
    kl_loss_coef: float = param(
        0.0, "Weight of a KL(policy || reference) term in the policy loss (GRPO's); 0 = off.", ge=0
    )
    kl_loss_estimator: Literal["k1", "k2", "k3"] = param(
        "k3", "Estimator of the KL term in the loss (k3 as GRPO uses)."
    )
    ptx_coef: float = param(
        0.0,
        "PPO-ptx (InstructGPT eq. 2): each policy optimizer step adds ptx_coef (gamma) x the LM "
        "loss of learner.ptx_batch_size sequences of data.pretrain per rank; 0 = plain PPO.",
        ge=0,
    )
    kl_coef: float = param(0.05, "KL penalty coefficient beta (initial value when adaptive).", ge=0)
    kl_estimator: Literal["k1", "k2", "k3"] = param("k1", "Per-token KL estimator.")
    adaptive_kl: bool = param(False, "Adapt kl_coef toward kl_target (Ziegler et al. 2019).")
    kl_target: float = param(6.0, "Target KL per sequence for the adaptive controller.", gt=0)
    kl_horizon: int = param(10000, "Horizon of the adaptive controller, in samples.", gt=0)
    whiten_advantages: bool = param(True, "Whiten advantages over the batch.")
    old_logprobs: Literal["auto", "learner", "rollout", "train"] = param(
        "auto",
        "Source of old_logprobs: a learner forward at scoring time; the engine's sampled-token "
        "log-probs (saves a policy forward); or the policy's own training forward, detached "
        "(train: saves it too, and equals learner where the policy steps once per rollout "
        "batch and nothing needs them before the step: ppo.kl_in_reward false). auto = train "
        "where that holds; else rollout when rollout.temperature is 1 and the first "
        "weight-sync check measured engine and learner log-probs within "
        "ppo.old_logprobs_tolerance (fp32: ~1e-6), else learner (bf16: ~1e-2).",
    )
    old_logprobs_tolerance: float = param(
        1e-3,
        "Largest engine-vs-learner probe log-prob difference at which auto lets the engine's "
        "log-probs serve as old_logprobs.",
        ge=0,
    )
    tis_cap: float | None = param(
        2.0,
        "With learner old_logprobs, weight each token's policy loss by min(pi_learner / "
        "pi_engine, tis_cap): truncated importance sampling of the engine-vs-learner mismatch "
        "(needs rollout.temperature 1, top_p 1, top_k -1); null = off.",
        gt=0,
    )
    old_values: Literal["auto", "rollout", "train"] = param(
        "auto",
        "Source of the values that GAE needs: a critic forward at rollout time, or the critic's "
        "own training forward, which sees the same weights when each rank's rows are one "
        "minibatch and ppo_epochs is 1 (saves a critic forward; GAE then runs in the learner). "
        "auto = train when that holds, else rollout.",
    )
    loss_agg: Literal[
        "token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm"
    ] = param(
        "token_mean",
        "How token losses become one number over a minibatch (on all ranks): the mean over its "
        "tokens; the mean over rows of each row's token mean, or token sum; or each row's token "
        "sum over rollout.max_new_tokens (Dr. GRPO's constant), averaged over rows.",
    )
    max_skipped_steps: int = param(
        3,
        "Steps in a row skipped for non-finite numbers (experience, or the loss or gradients of "
        "every policy optimizer step) before the run stops with a checkpoint and batch "
        "statistics; 0 = never stop.",
        ge=0,
    )


@dataclass
class RunConfig:
    """The run folder, steps, seeds, cluster."""

    output_dir: str = param("runs/default", "Run folder (config.yaml, metrics.jsonl, final/).")
    steps: int = param(10, "Steps of the stage (for a pipeline: of its PPO stage).", ge=0)
    seed: int = param(0, "Seed of every random choice.", ge=0)
    save_every: int = param(0, "Checkpoint every N steps; 0 = only the final model.", ge=0)
    keep_last: int = param(2, "Checkpoints kept.", ge=1)
    resume: str = param("", "`auto` (latest checkpoint in output_dir) or a checkpoint path.")
    ray_address: str = param("", "Ray cluster to join; empty = RAY_ADDRESS or a new local Ray.")
    colocate: bool = param(False, "Pack all roles onto shared bundles (GPUs) instead of their own.")
    timeout_s: float = param(600.0, "Longest wait for any remote call before the run fails.", gt=0)
    start_timeout_s: float = param(
        900.0,
        "Longest wait for the actors to start (model loads, vLLM engine start).",
        gt=0,
    )
    name: str = param("", "Run label for metrics; empty = the output folder's name.")
    tensorboard: bool = param(True, "Also write metrics as TensorBoard events (run folder).")
    wandb_project: str = param(
        "", "Also log metrics to this W&B project (needs wandb; WANDB_MODE=offline works)."
    )
    max_actor_restarts: int = param(
        3,
        "Restarts of rollout, reward and reference actors in one PPO run before it stops.",
        ge=0,
    )
    max_failures: int = param(
        1,
        "Restarts of a failed SFT / RM worker group (Ray Train FailureConfig); -1 = no limit.",
        ge=-1,
    )
    log_level: Literal["warning", "info", "debug"] = param(
        "warning",
        "What actors print: their libraries' warnings and above (lines of a working run that "
        "read like failures left out), info, or debug (everything).",
    )


@dataclass
class Config:
    """All settings of one run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    rm: RMConfig = field(default_factory=RMConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    labeling: LabelingConfig = field(default_factory=LabelingConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)
