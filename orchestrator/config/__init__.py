"""Settings: the schema (one dataclass per section, a docstring per field), loading YAML and
`--section.key=value` overrides, the cross-field checks and the precision a run resolves to.

    cfg = validate_config(load_config("ppo.yaml", ["--run.steps=3"]), "ppo")
"""

from instructray.orchestrator.config.checks import (
    REWARD_MODEL,
    STAGES,
    URL_SOURCE,
    needs_critic,
    parse_reward_sources,
    reward_call_policy,
    reward_sources,
    uses_reward_model,
    validate_config,
)
from instructray.orchestrator.config.load import (
    describe_fields,
    dump_config,
    load_config,
    normalize_overrides,
    sections,
    set_key,
)
from instructray.orchestrator.config.schema import Config, ConfigError

__all__ = [
    "REWARD_MODEL",
    "URL_SOURCE",
    "STAGES",
    "Config",
    "ConfigError",
    "describe_fields",
    "dump_config",
    "load_config",
    "needs_critic",
    "normalize_overrides",
    "parse_reward_sources",
    "reward_call_policy",
    "reward_sources",
    "sections",
    "set_key",
    "uses_reward_model",
    "validate_config",
]
