"""`instructray pipeline`: InstructGPT's three steps in one run folder.

    sft/    SFT of model.policy on data.demonstrations
    rm/     reward model from data.rankings, started from the SFT model
    ppo/    PPO from the SFT model: reference = SFT, reward = the RM, critic started from the RM
    final   -> the last PPO stage's final/ (written last: a finished pipeline has it)

With `data.rankings` empty, the first rankings are InstructGPT's own kind: the SFT model samples
responses that `pipeline.labeler` ranks (K from `pipeline.min_samples_per_prompt` to
`pipeline.samples_per_prompt` per prompt). With `pipeline.iterations` > 1, steps 2-3 repeat
(rm-2/, ppo-2/, ...): the current policy samples responses to `pipeline.rank_prompts` prompts,
the labeler ranks them, and the RM retrains on the old and new rankings (InstructGPT's data
accumulates); PPO continues from the current policy, still held near the SFT model.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any

from instructray.actors.lora import model_folder
from instructray.actors.scoring.rule_rewards import check_ranking
from instructray.kernels import ranking_value
from instructray.orchestrator.cluster import connect
from instructray.orchestrator.config import Config
from instructray.orchestrator.config.functions import load_function
from instructray.orchestrator.data import (
    convert_rankings,
    load_rows,
)
from instructray.orchestrator.output import RunFolder, run_label
from instructray.orchestrator.ppo.run import run_ppo
from instructray.orchestrator.sampler import sample_for_ranking
from instructray.orchestrator.supervised import run_rm, run_sft

logger = logging.getLogger(__name__)


def _stage(cfg: Config, root: Path, name: str, **models: str) -> Config:
    stage = copy.deepcopy(cfg)
    stage.run.name = run_label(cfg)  # the stages' metrics carry the pipeline's run label
    stage.run.output_dir = str(root / name)
    for key, value in models.items():
        setattr(stage.model, key, value)
    return stage


def ppo_stage(cfg: Config, root: Path, name: str, policy: str, sft: str, rm: str) -> Config:
    """The config of a PPO stage: from `policy`, held near the SFT model, rewarded by the RM."""
    stage = _stage(cfg, root, name, policy=policy, reference=sft, reward=rm, tokenizer=sft)
    stage.reward.function, stage.reward.weights = "", []
    return stage


def new_rankings(cfg: Config, policy: str, labeler: Any) -> list[dict[str, Any]]:
    """Sample K responses per prompt (sample_for_ranking); rank them by labeler."""
    ranked = []
    for row in sample_for_ranking(cfg, policy):
        text, _ = row.pop("formatted"), row.pop("author")
        ranking = check_ranking(labeler(text, row["responses"]), len(row["responses"]))
        ranked.append({**row, "ranking": ranking_value(ranking)})
    return ranked


def run_pipeline(cfg: Config, folder: RunFolder | None = None) -> RunFolder:
    """SFT -> RM -> PPO (-> RM -> PPO ... with a labeler), each stage in its own sub-folder of
    cfg.run.output_dir (or of `folder`, a run folder the caller already opened)."""
    from instructray.orchestrator.model_specs import resolve_models

    folder = folder or RunFolder(cfg)
    root = folder.path
    iterations = cfg.pipeline.iterations
    from_samples = not cfg.data.rankings  # InstructGPT's own way: rank the SFT model's samples
    human = cfg.pipeline.labeler == "human"  # people rank on the labeling service
    labeler = (
        load_function(cfg.pipeline.labeler, "pipeline.labeler")
        if (iterations > 1 or from_samples) and not human
        else None
    )
    resolve_models(cfg, need_reward=False)

    logger.info("pipeline 1/%d: sft", 1 + 2 * iterations)
    sft = run_or_reuse(run_sft, _stage(cfg, root, "sft"))
    rows, policy = _rankings_rows(cfg), sft
    for it in range(1, iterations + 1):
        suffix = "" if it == 1 else f"-{it}"
        rm_cfg = _stage(cfg, root, f"rm{suffix}", policy=sft, tokenizer=sft)
        if it > 1 or from_samples:  # old rankings plus the current policy's, ranked
            rankings = root / f"rankings{suffix}.jsonl"
            if cfg.run.resume and rankings.exists():  # ranked before the run was stopped
                rows = [json.loads(x) for x in rankings.read_text().splitlines() if x]
            else:
                if human:
                    new = _human_rankings(cfg, root, policy, it)
                else:
                    new = new_rankings(cfg, policy, labeler)
                rows = rows + new
                tmp = rankings.with_suffix(".tmp")
                tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
                tmp.replace(rankings)
            rm_cfg.data.rankings, rm_cfg.data.rankings_format = str(rankings), "auto"
        logger.info("pipeline %d/%d: rm%s", 2 * it, 1 + 2 * iterations, suffix)
        rm = run_or_reuse(run_rm, rm_cfg)
        logger.info("pipeline %d/%d: ppo%s", 2 * it + 1, 1 + 2 * iterations, suffix)
        ppo_cfg = ppo_stage(cfg, root, f"ppo{suffix}", policy, sft, rm)
        policy = run_or_reuse(run_ppo, ppo_cfg)
    # Last: the pipeline's own final, a relative link to the last PPO stage's model.
    link = root / "final"
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(os.path.relpath(Path(ppo_cfg.run.output_dir) / "final", root), link)
    return folder


def _human_rankings(cfg: Config, root: Path, policy: str, it: int) -> list[dict[str, Any]]:
    """Round `it`'s rankings by people (or labeling.bots) on the labeling service: the current
    policy's samples, published once, waited for (a stopped run waits on when resumed)."""
    from instructray.orchestrator.labeling.round import labeling_round

    if cfg.labeling.serve == "ray":  # a resumed run may not have joined its cluster yet
        connect(cfg)
    p, r = cfg.pipeline, cfg.rollout
    provenance = {
        "model": policy,
        "ranking_models": p.ranking_models,
        "round": it,
        "temperature": r.temperature,
        "max_new_tokens": r.max_new_tokens,
        "seed": cfg.run.seed,
    }
    suffix = "" if it == 1 else f"-{it}"
    return labeling_round(
        cfg,
        root / f"labeling{suffix}",
        f"round-{it}",
        lambda: sample_for_ranking(cfg, policy),
        provenance,
    )


def run_or_reuse(run: Any, stage: Config) -> str:
    """Run a stage; with run.resume, a stage that already wrote final/ is kept as it is (and a
    PPO stage stopped midway continues from its latest checkpoint). -> its final/ model (with
    LoRA, final/merged/: what the next stages load)."""
    final = Path(stage.run.output_dir) / "final"
    if stage.run.resume and final.exists():
        logger.info("pipeline: %s already finished; kept", final.parent.name)
        return model_folder(str(final.resolve()))
    return model_folder(str(run(stage).final_dir))


def _rankings_rows(cfg: Config) -> list[dict[str, Any]]:
    if not cfg.data.rankings:
        return []
    rows = load_rows(cfg.data.rankings, cfg.data.split)
    if cfg.data.rankings_format != "auto":
        rows = convert_rankings(rows, cfg.data.rankings_format, cfg.data.rankings)
    return rows
