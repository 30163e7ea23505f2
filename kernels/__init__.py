"""Pure tensor math of InstructRay: every equation of SFT, the K-wise reward model and PPO lives
here once. Imports torch only (never ray, vllm, deepspeed, orchestrator or actors)."""

from instructray.kernels.advantages import compute_gae
from instructray.kernels.estimators import (
    CRITIC_FREE_ESTIMATORS,
    GROUP_ESTIMATORS,
    estimator_advantages,
    group_advantages,
    returns_to_go,
)
from instructray.kernels.kl import KL_ESTIMATORS, kl_loss, kl_penalty
from instructray.kernels.kl_control import AdaptiveKLController, FixedKLController
from instructray.kernels.logprobs import logprobs_from_hidden, logprobs_from_logits
from instructray.kernels.losses import (
    LOSS_AGG_MODES,
    aggregate_loss,
    aggregation_count,
    entropy_from_logits,
    policy_loss,
    truncated_is_weights,
    value_loss,
)
from instructray.kernels.masked import (
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    zero_masked,
)
from instructray.kernels.ranking import (
    MAX_RESPONSES,
    MIN_RESPONSES,
    kwise_ranking_loss,
    pairwise_loss,
    ranking_value,
    tie_groups,
    tie_tensors,
)
from instructray.kernels.rewards import combine_rewards, compute_token_rewards, last_token_index
from instructray.kernels.sft import sft_loss

__all__ = [
    "CRITIC_FREE_ESTIMATORS",
    "GROUP_ESTIMATORS",
    "KL_ESTIMATORS",
    "LOSS_AGG_MODES",
    "MAX_RESPONSES",
    "MIN_RESPONSES",
    "AdaptiveKLController",
    "FixedKLController",
    "aggregate_loss",
    "aggregation_count",
    "combine_rewards",
    "compute_gae",
    "compute_token_rewards",
    "entropy_from_logits",
    "estimator_advantages",
    "group_advantages",
    "kl_loss",
    "kl_penalty",
    "kwise_ranking_loss",
    "last_token_index",
    "logprobs_from_hidden",
    "logprobs_from_logits",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "pairwise_loss",
    "ranking_value",
    "tie_groups",
    "tie_tensors",
    "policy_loss",
    "returns_to_go",
    "sft_loss",
    "truncated_is_weights",
    "value_loss",
    "zero_masked",
]


# Imported by its bare folder name (a clone's root on sys.path): that name is not ours.
if __name__ == "kernels":
    from instructray import step_aside

    step_aside(__name__, __file__)
