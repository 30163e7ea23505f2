"""What LoRA (learner.lora_rank > 0) decides for a run: where the reference log-probs come from,
what a weight sync sends, and the engines' adapter rank; and its cross-field checks."""

from __future__ import annotations

from instructray.orchestrator.config.schema import Config

# The ranks vLLM 0.32 accepts for max_lora_rank (vllm.config.lora.MaxLoRARanks).
ENGINE_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def reference_in_learner(cfg: Config) -> bool:
    """Whether ref_logprobs come from the learner's policy with its adapters off (no reference
    actor): reference.source policy_base, or auto with LoRA and no reference of its own."""
    source, m = cfg.reference.source, cfg.model
    if source != "auto":
        return source == "policy_base"
    return cfg.learner.lora_rank > 0 and m.reference in ("", m.policy)


def adapter_sync(cfg: Config) -> bool:
    """Whether a weight sync sends the policy's LoRA adapters alone (else full weights)."""
    return cfg.learner.lora_rank > 0 and cfg.rollout.lora_sync in ("auto", "adapter")


def engine_lora_rank(rank: int) -> int:
    """The smallest max_lora_rank vLLM accepts that holds adapters of this rank."""
    return next(r for r in ENGINE_LORA_RANKS if r >= rank)


def check_lora(cfg: Config, errors: list[str]) -> None:
    """LoRA's settings against each other and the PPO roles."""
    learner, r = cfg.learner, cfg.rollout
    if not learner.lora_rank:
        if cfg.reference.source == "policy_base":
            errors.append(
                "reference.source = policy_base takes ref_logprobs from the policy with its LoRA "
                "adapters off: it needs learner.lora_rank > 0"
            )
        for key, on in (
            ("rollout.lora_sync", r.lora_sync != "auto"),
            ("learner.critic_lora", learner.critic_lora),
        ):
            if on:
                errors.append(f"{key} is set but learner.lora_rank = 0 (LoRA is off)")
        return
    if not learner.lora_targets:
        errors.append("learner.lora_targets is empty: name the modules that get adapters")
    if adapter_sync(cfg) and learner.lora_rank > ENGINE_LORA_RANKS[-1]:
        errors.append(
            f"learner.lora_rank = {learner.lora_rank} exceeds the largest adapter rank vLLM "
            f"serves ({ENGINE_LORA_RANKS[-1]}); use rollout.lora_sync = merged"
        )
    if reference_in_learner(cfg) and cfg.model.reference not in ("", cfg.model.policy):
        errors.append(
            f"reference.source = policy_base takes ref_logprobs from the policy's base, but "
            f"model.reference names another model ({cfg.model.reference}); use "
            f"reference.source = actor, or leave model.reference empty"
        )
