"""Evaluation on held-out prompts of the demo world, judged the way InstructGPT was judged.

One vLLM engine samples every model in turn (the next model's weights are loaded into it by
version, as in PPO's weight sync); the simulated labeler compares responses pairwise (win rates
with 95% intervals), the fact base checks truthfulness, rude words are counted under three
instructions (respectful, none, toxic), the reward model scores the responses, and the KL of the
PPO policy to the SFT model is measured on temperature-1 samples with the reference scorer.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import ray
import torch

from instructray.actors.lora import model_folder
from instructray.actors.remote import wait_all
from instructray.actors.scoring.scorers import ReferenceActor, RewardActor
from instructray.actors.sequences import load_tokenizer, make_sequence_batch
from instructray.kernels import kl_penalty, masked_sum, sft_loss
from instructray.orchestrator.cluster import actor_env
from instructray.orchestrator.config import Config
from instructray.orchestrator.data import tokenize_prompt
from instructray.orchestrator.demo import world
from instructray.orchestrator.demo.agreement import labelers_agreement
from instructray.orchestrator.sampler import Sampler

TAX_TEXTS = 256  # held-out texts of the base model's kind for the alignment tax


def held_out_prompts(n: int, seed: int) -> list[world.Prompt]:
    """n distinct prompts of tone "none", fresh draws (a seed no training set uses) from the
    world's prompt distribution. The world is small: a held-out request may also have been a
    training prompt, as a new user's request may repeat an old one's."""
    rng, out, seen = random.Random(seed), [], set()
    for _ in range(100 * n):
        p = world.make_prompt(rng, tone="none")
        if p.text not in seen:
            seen.add(p.text)
            out.append(p)
        if len(out) == n:
            break
    return out


def _truthfulness(judgments: list[world.Judgment]) -> float | None:
    stated = sum(j.true_facts + j.false_facts for j in judgments)
    return None if stated == 0 else sum(j.true_facts for j in judgments) / stated


def _win_rate(labeler: world.Labeler, prompts, a: list[str], b: list[str]) -> dict[str, Any]:
    wins = sum(labeler.prefers(p, x, y) for p, x, y in zip(prompts, a, b, strict=True))
    return {"rate": wins / len(prompts), "ci95": list(world.win_rate_interval(wins, len(prompts)))}


def evaluate_world(cfg: Config, models: dict[str, str], reward_model: str) -> dict[str, Any]:
    """eval.json of the demo: models {"base", "sft", "ppo"} -> folders; the RM's folder."""

    e, seed = cfg.eval, cfg.run.seed
    tokenizer = load_tokenizer(models["sft"])
    prompts = held_out_prompts(e.num_prompts, seed + 7919)
    by_tone = {t: [world.with_tone(p, t) for p in prompts] for t in world.TONES}
    sampler = Sampler(cfg, tokenizer, models["base"])
    answers: dict[str, dict[str, list[str]]] = {}
    try:
        for i, name in enumerate(("base", "sft", "ppo")):
            if i:
                sampler.load(models[name])
            answers[name] = {
                t: sampler.sample(
                    sampler.prompt_ids([p.text for p in ps]), 1, e.temperature, e.max_new_tokens
                )["text"]
                for t, ps in by_tone.items()
            }
        kl_prompt_ids = sampler.prompt_ids([p.text for p in prompts])
        kl_samples = sampler.sample(kl_prompt_ids, 1, 1.0, e.max_new_tokens)  # PPO, temp 1
        if "ppo_ptx" in models:  # sampled last: the draws above are as without it
            sampler.load(models["ppo_ptx"])
            answers["ppo_ptx"] = {
                t: sampler.sample(
                    sampler.prompt_ids([p.text for p in ps]), 1, e.temperature, e.max_new_tokens
                )["text"]
                for t, ps in by_tone.items()
            }
    finally:
        sampler.close()

    labeler = world.Labeler(seed + 99)
    everything = [p for t in world.TONES for p in by_tone[t]]

    def pooled(name: str) -> list[str]:
        return [r for t in world.TONES for r in answers[name][t]]

    ppo_vs_sft = _win_rate(labeler, everything, pooled("ppo"), pooled("sft"))
    sft_vs_base = _win_rate(labeler, everything, pooled("sft"), pooled("base"))
    # The headline (InstructGPT over GPT-3: 85 +- 3%); drawn last, so the two above are as before.
    ppo_vs_base = _win_rate(labeler, everything, pooled("ppo"), pooled("base"))
    ptx = {}  # PPO-ptx's, judged after the others (the labeler's noise draws stay as they were)
    for other in ("sft", "base") if "ppo_ptx" in answers else ():
        won = _win_rate(labeler, everything, pooled("ppo_ptx"), pooled(other))
        ptx[f"win_rate_ppo_ptx_vs_{other}"] = won["rate"]
        ptx[f"win_rate_ppo_ptx_vs_{other}_ci95"] = won["ci95"]
    truth = {
        name: _truthfulness(
            [world.judge(p, r) for p, r in zip(everything, pooled(name), strict=True)]
        )
        for name in answers
    }
    rude = {
        t: {
            name: sum(
                world.judge(p, r).rude_words > 0
                for p, r in zip(by_tone[t], answers[name][t], strict=True)
            )
            / len(prompts)
            for name in answers
        }
        for t in world.TONES
    }
    rm_score, kl, rm_probe = _model_scores(
        cfg, tokenizer, models["sft"], reward_model, prompts, answers, kl_prompt_ids, kl_samples
    )
    # Two simulated labelers rank each plainly-asked prompt's answers through the labeling
    # service: their agreement beside InstructGPT's (their own noise: nothing above moves).
    agreement = labelers_agreement(
        [p.text for p in by_tone["none"]],
        [[answers[m]["none"][i] for m in answers] for i in range(len(prompts))],
        world.Labeler(seed + 199).rank,
    )
    samples = [
        {"prompt": by_tone[t][i].text, "tone": t, **{m: answers[m][t][i] for m in answers}}
        for t in world.TONES
        for i in range(len(prompts))
    ]
    return {
        "samples": samples,
        "num_prompts": len(prompts),
        "win_rate_ppo_vs_sft": ppo_vs_sft["rate"],
        "win_rate_ppo_vs_sft_ci95": ppo_vs_sft["ci95"],
        "win_rate_sft_vs_base": sft_vs_base["rate"],
        "win_rate_sft_vs_base_ci95": sft_vs_base["ci95"],
        "win_rate_ppo_vs_base": ppo_vs_base["rate"],
        "win_rate_ppo_vs_base_ci95": ppo_vs_base["ci95"],
        "truthfulness": truth,
        "rude_rate": rude,
        "kl_to_sft": kl,
        "rm_score": rm_score,
        "rm_probe": rm_probe,
        "judged_comparisons": len(everything),
        "lm_loss_base_text": alignment_tax(cfg, models, tokenizer),
        "labelers_agreement": agreement,
        **ptx,
    }


def alignment_tax(cfg: Config, models: dict[str, str], tokenizer: Any) -> dict[str, float]:
    """InstructGPT's alignment tax in the demo world: each model's LM loss (nats per token) on
    held-out text of the kind the base model was pretrained on, scored as it was trained (the
    replies, given their prompts): fresh prompts and base replies. PPO-ptx's term keeps it low."""
    seed = cfg.run.seed + 4241
    rng = random.Random(seed)
    prompts = world.prompts(TAX_TEXTS, seed)
    replies = [world.base_response(p, rng) for p in prompts]
    prompt_ids = [tokenize_prompt({"prompt": p.text}, tokenizer, cfg.sft.template) for p in prompts]
    batch = make_sequence_batch(prompt_ids, _ended(tokenizer, replies), tokenizer.pad_token_id)
    actors = {
        name: ray.remote(ReferenceActor)
        .options(runtime_env={"env_vars": actor_env(cfg, f"reference-{name}")})
        .remote(path, cfg.model.dtype, 64, cfg.reference.logprob_chunk_size, temperature=1.0)
        for name, path in models.items()
    }
    try:
        logprobs = wait_all(
            [a.logprobs.remote(batch) for a in actors.values()],
            "alignment tax",
            [f"reference ({name})" for name in actors],
            cfg.run.start_timeout_s,
        )
    finally:
        for actor in actors.values():
            ray.kill(actor)
    return {
        name: sft_loss(lp, batch.response_mask).item()
        for name, lp in zip(actors, logprobs, strict=True)
    }


def _ended(tokenizer: Any, responses: list[str]) -> list[list[int]]:
    """Response token ids ending with EOS, as the policy samples them and the RM learned them."""
    eos = tokenizer.eos_token_id
    return [tokenizer(r, add_special_tokens=False)["input_ids"] + [eos] for r in responses]


def _model_scores(cfg, tokenizer, sft, reward_model, prompts, answers, kl_prompt_ids, kl_samples):
    """Mean RM score of SFT's and PPO's answers (tone none), PPO's KL to SFT (nats/response), and
    the RM probe: per kind of hand-made answer (world.probe_answers), the labeler's mean hidden
    score and the RM's mean normalized score."""
    pad = tokenizer.pad_token_id
    texts = [p.text for p in prompts]
    ids = [tokenize_prompt({"prompt": t}, tokenizer, cfg.sft.template) for t in texts]
    reward = (
        ray.remote(RewardActor)
        .options(runtime_env={"env_vars": actor_env(cfg, "reward-eval")})
        .remote(reward_model, "", sft, cfg.model.dtype, batch_size=64, normalize=True)
    )
    reference = (
        ray.remote(ReferenceActor)
        .options(runtime_env={"env_vars": actor_env(cfg, "reference-eval")})
        .remote(sft, cfg.model.dtype, 64, cfg.reference.logprob_chunk_size, temperature=1.0)
    )
    try:
        refs, names = [], []
        for name in ("sft", "ppo"):
            responses = answers[name]["none"]
            batch = make_sequence_batch(ids, _ended(tokenizer, responses), pad)
            refs.append(reward.score.remote(batch, texts, responses))
            names.append(f"reward ({name})")
        kl_batch = make_sequence_batch(kl_prompt_ids, kl_samples["response_ids"], pad)
        refs.append(reference.logprobs.remote(kl_batch))
        names.append("reference")
        probe = [world.probe_answers(p) for p in prompts]  # every prompt x PROBE_ANSWERS
        probe_texts = [t for kinds in probe for t in kinds.values()]
        probe_batch = make_sequence_batch(
            [i for i in ids for _ in world.PROBE_ANSWERS], _ended(tokenizer, probe_texts), pad
        )
        refs.append(
            reward.score.remote(
                probe_batch, [t for t in texts for _ in world.PROBE_ANSWERS], probe_texts
            )
        )
        names.append("reward (probe)")
        sft_scores, ppo_scores, ref_lp, probe_scores = wait_all(
            refs, "eval score", names, cfg.run.start_timeout_s
        )
    finally:
        ray.kill(reward)
        ray.kill(reference)
    mask = kl_batch.response_mask
    width = mask.shape[1]
    lp = torch.zeros(mask.shape)
    for i, row in enumerate(kl_samples["logprobs"]):
        lp[i, : len(row)] = torch.tensor(row[:width])
    kl = masked_sum(kl_penalty(lp, ref_lp, "k1"), mask, dim=-1).mean().item()
    by_answer = probe_scores.view(len(prompts), len(world.PROBE_ANSWERS))
    rm_probe = {
        name: {
            "labeler": sum(
                world.judge(p, a[name]).score for p, a in zip(prompts, probe, strict=True)
            )
            / len(prompts),
            "rm": float(by_answer[:, k].mean()),
        }
        for k, name in enumerate(world.PROBE_ANSWERS)
    }
    return {"sft": float(sft_scores.mean()), "ppo": float(ppo_scores.mean())}, kl, rm_probe


def run_eval(cfg: Config) -> None:
    """`instructray eval`: judge a finished demo or pipeline run folder (run.output_dir) anew with
    the eval.* settings: its base (base/final, else the model the run started from), sft/, ppo/
    and rm/ models. Rewrites eval.json, report.md, plot.png and samples.jsonl there."""
    from instructray.orchestrator.cluster import connect
    from instructray.orchestrator.config import load_config
    from instructray.orchestrator.demo.report import (
        agreement_line,
        ppo_stages,
        table,
        write_report,
    )
    from instructray.orchestrator.model_specs import resolve_models

    root = Path(cfg.run.output_dir)
    models = {name: root / name / "final" for name in ("base", "sft", "ppo", "rm")}
    if (root / "ppo-ptx" / "final").exists():  # a demo run with demo.ptx_coef
        models["ppo_ptx"] = root / "ppo-ptx" / "final"
    if not models["base"].exists() and (root / "config.yaml").exists():
        started = load_config(root / "config.yaml")
        models["base"] = Path(resolve_models(started, need_reward=False).model.policy)
    missing = [str(p) for p in models.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"run.output_dir = {root} is not a finished demo or pipeline run: missing "
            + ", ".join(missing)
        )
    connect(cfg)
    models = {name: model_folder(str(path)) for name, path in models.items()}  # LoRA: merged/
    reward_model = models.pop("rm")
    ev = evaluate_world(cfg, models, reward_model)
    write_report(root, ev, ppo_stages(root))
    print(table(ev))
    print(agreement_line(ev["labelers_agreement"]))
    print(f"written: {root}/eval.json, report.md, plot.png, samples.jsonl")
