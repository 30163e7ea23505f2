"""Settings: the schema (one dataclass per section, a docstring per field), loading YAML and
`--section.key=value` overrides, the cross-field checks and the precision a run resolves to.

    cfg = validate_config(load_config("ppo.yaml", ["--run.steps=3"]), "ppo")
"""

from orchestrator.config.checks import STAGES, needs_critic, validate_config
from orchestrator.config.load import (
    describe_fields,
    dump_config,
    load_config,
    sections,
    set_key,
)
from orchestrator.config.schema import Config, ConfigError

__all__ = [
    "STAGES",
    "Config",
    "ConfigError",
    "describe_fields",
    "dump_config",
    "load_config",
    "needs_critic",
    "sections",
    "set_key",
    "validate_config",
]
