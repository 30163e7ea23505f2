"""Model specs made concrete before anything starts: `tiny://` models built (or found in their
cache), local folders made absolute. Not in config/: it imports instructray.actors.tiny_models."""

from __future__ import annotations

from pathlib import Path

from instructray.actors.lora import model_folder
from instructray.actors.tiny_models import is_tiny, resolve
from instructray.orchestrator.config import Config, uses_reward_model
from instructray.orchestrator.config.precision import resolve_precision


def resolve_models(cfg: Config, need_reward: bool = True) -> Config:
    """Build tiny:// models, check local folders exist; -> cfg with concrete (absolute) paths.

    Mutates cfg (and resolves its precision); config.yaml keeps the specs as given, which the
    run folder writes before this runs."""
    resolve_precision(cfg)
    m = cfg.model
    cache = m.tiny_dir or None
    if not uses_reward_model(cfg):
        m.reward = ""

    def concrete(spec: str, key: str) -> str:
        if is_tiny(spec):
            try:
                return resolve(spec, cache)
            except ValueError as e:  # an unknown name: say which key named it
                raise ValueError(f"{key}: {e}") from None
        if Path(spec).exists():  # absolute: actors run in other directories
            return str(Path(model_folder(spec)).resolve())  # a LoRA final/: its merged model
        if spec.startswith((".", "/")):
            raise FileNotFoundError(f"{key}: {spec} does not exist")
        return spec

    for key in ("policy", "reward", "reference", "tokenizer"):
        if getattr(m, key):
            setattr(m, key, concrete(getattr(m, key), f"model.{key}"))
    cfg.pipeline.ranking_models = [
        concrete(spec, "pipeline.ranking_models") for spec in cfg.pipeline.ranking_models
    ]
    m.reference = m.reference or m.policy
    m.tokenizer = m.tokenizer or m.policy
    if need_reward and uses_reward_model(cfg) and not m.reward:
        raise ValueError("no reward: set model.reward (a reward model) or reward.function")
    return cfg
