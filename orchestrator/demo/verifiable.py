"""`instructray demo` with `demo.task: verifiable` (deploy/configs/grpo-tiny-cpu.yaml):
reinforcement learning against a verifiable reward in the demo world, with no reward model.

Few-shot and continuation prompts of the world ("the dog says woof. the cow says") have one
right answer each (world.answer_of). The preference demo's base LM (pretrained briefly on the
world's unfiltered text) is fine-tuned on the labeler's demonstrations (SFT), then trained from
the SFT model with ppo.estimator (GRPO in the shipped config: each prompt's group of samples is
its own baseline, no critic) against world.exact_match (1 for the right first answer, else 0)
on quiz prompts (world.quiz_prompts), with the KL to the SFT model in the loss. Fresh quiz
questions then measure each model's accuracy, greedy and sampled at eval.temperature; the run
folder gets eval.json, report.md and samples.jsonl.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from instructray.actors.lora import model_folder
from instructray.orchestrator.cluster import connect
from instructray.orchestrator.config import Config
from instructray.orchestrator.demo import world
from instructray.orchestrator.demo.data import write_world_data
from instructray.orchestrator.output import RunFolder, read_metrics, run_label

REWARD = "instructray.orchestrator.demo.world:exact_match"
SAMPLES_PER_PROMPT = 8  # sampled answers per held-out question (greedy: one)
EVAL_SEED_OFFSET = 7919  # as evaluate.held_out_prompts: a seed no training set uses
CURVE_STEPS = 20  # steps averaged at each end of the RL stage's reward curve (at most half)


def rl_name(cfg: Config) -> str:
    """The RL stage's folder and label: the estimator's name (grpo, rloo, ...), ppo for GAE."""
    return "ppo" if cfg.ppo.estimator == "gae" else cfg.ppo.estimator


def write_quiz_data(folder: Path, cfg: Config) -> dict[str, str]:
    """The preference demo's base text and demonstrations (data.write_world_data), and as the RL
    prompts demo.ppo_prompts quiz prompts in place of its mixed ones. -> {name: path}."""
    paths = write_world_data(folder, cfg)
    quiz = world.quiz_prompts(cfg.demo.ppo_prompts, cfg.run.seed + 2)
    rows = [{"prompt": p.text, "user_id": f"u{i % 64}"} for i, p in enumerate(quiz)]
    Path(paths["prompts"]).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


def _stage(cfg: Config, name: str, **models: str) -> Config:
    """cfg for one stage in the run folder's sub-folder `name`, with the given model.* paths."""
    stage = copy.deepcopy(cfg)
    stage.run.name = run_label(cfg)  # the stages' metrics carry the demo's run label
    stage.run.output_dir = str(Path(cfg.run.output_dir).resolve() / name)
    for key, value in models.items():
        setattr(stage.model, key, value)
    return stage


def base_stage_config(cfg: Config, base_text: str) -> Config:
    """The base LM's brief pretraining, as run_demo's: SFT of model.policy on the world's
    unfiltered text with demo.base_epochs and demo.base_lr."""
    stage = _stage(cfg, "base")
    stage.data.demonstrations = base_text
    stage.sft.epochs, stage.sft.lr = cfg.demo.base_epochs, cfg.demo.base_lr
    return stage


def sft_stage_config(cfg: Config, base: str, demonstrations: str) -> Config:
    """SFT of the base LM on the labeler's demonstrations."""
    stage = _stage(cfg, "sft", policy=base, tokenizer=base, reference=base)
    stage.data.demonstrations = demonstrations
    return stage


def grpo_stage_config(cfg: Config, sft_path: str, prompts_path: str) -> Config:
    """The RL stage: from the SFT model (also the KL reference), ppo.estimator as configured,
    against world.exact_match on the quiz prompts; no reward model (and no critic but GAE's)."""
    stage = _stage(cfg, rl_name(cfg), policy=sft_path, reference=sft_path, tokenizer=sft_path)
    stage.model.reward = ""
    stage.reward.function = REWARD
    stage.reward.normalize = False  # a reward model's saved statistics: there is none
    stage.data.prompts = prompts_path
    return stage


def _accuracy(prompts: list[str], answers: list[str]) -> float:
    return sum(world.exact_match(prompts, answers)) / len(answers)


def evaluate_accuracy(cfg: Config, models: dict[str, str]) -> dict[str, Any]:
    """Exact-match accuracy of each model ({label: folder}, base first) on eval.num_prompts fresh
    draws of quiz questions (the world holds 24 facts: many were training prompts too, word for
    word): greedy (one answer each) and SAMPLES_PER_PROMPT samples at eval.temperature, overall
    and per kind of prompt, and the words per greedy answer. One vLLM engine serves the models
    in turn."""
    from instructray.actors.sequences import load_tokenizer
    from instructray.orchestrator.sampler import Sampler

    e = cfg.eval
    quiz = world.quiz_prompts(e.num_prompts, cfg.run.seed + EVAL_SEED_OFFSET)
    texts = [p.text for p in quiz]
    names = list(models)
    tokenizer = load_tokenizer(models[names[0]])
    sampler = Sampler(cfg, tokenizer, models[names[0]])
    greedy: dict[str, list[str]] = {}
    sampled: dict[str, list[str]] = {}
    sampled_prompts: list[str] = []
    try:
        ids = sampler.prompt_ids(texts)
        for i, name in enumerate(names):
            if i:
                sampler.load(models[name])
            greedy[name] = sampler.sample(ids, 1, 0.0, e.max_new_tokens)["text"]
            out = sampler.sample(ids, SAMPLES_PER_PROMPT, e.temperature, e.max_new_tokens)
            sampled[name] = out["text"]
            sampled_prompts = [texts[j] for j in out["prompt_index"]]
    finally:
        sampler.close()

    kind_of = {p.text: p.kind for p in quiz}

    def of_kind(kind: str, prompts: list[str], answers: list[str]) -> float | None:
        picked = [(p, a) for p, a in zip(prompts, answers, strict=True) if kind_of[p] == kind]
        return _accuracy([p for p, _ in picked], [a for _, a in picked]) if picked else None

    accuracy = {
        name: {
            "greedy": _accuracy(texts, greedy[name]),
            "sampled": _accuracy(sampled_prompts, sampled[name]),
            "words": sum(len(a.split()) for a in greedy[name]) / len(texts),
            "by_kind": {
                kind: {
                    "greedy": of_kind(kind, texts, greedy[name]),
                    "sampled": of_kind(kind, sampled_prompts, sampled[name]),
                }
                for kind in world.QUIZ_KINDS
            },
        }
        for name in names
    }
    samples = [
        {"prompt": p.text, "kind": p.kind, "answer": world.answer_of(p.text)}
        | {name: greedy[name][i] for name in names}
        for i, p in enumerate(quiz)
    ]
    return {
        "task": "verifiable",
        "reward": REWARD,
        "num_prompts": len(quiz),
        "samples_per_prompt": SAMPLES_PER_PROMPT,
        "temperature": e.temperature,
        "accuracy": accuracy,
        "samples": samples,
    }


def training_curve(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The RL stage's mean reward (its training accuracy at rollout.temperature) over its first
    and last CURVE_STEPS steps (half the steps, if fewer), and its KL to the SFT model there."""
    rewards = [r["reward/mean"] for r in rows if r.get("reward/mean") is not None]
    kls = [r.get("kl/mean") or 0.0 for r in rows if r.get("reward/mean") is not None]
    if not rewards:
        return {}
    n = max(1, min(CURVE_STEPS, len(rewards) // 2))
    return {
        "steps": len(rewards),
        "window": n,
        "reward_first": sum(rewards[:n]) / n,
        "reward_last": sum(rewards[-n:]) / n,
        "kl_last": sum(kls[-n:]) / n,
    }


def table(ev: dict[str, Any]) -> str:
    """The accuracy table (Markdown; also what the demo prints)."""
    acc, label = ev["accuracy"], ev.get("rl_label", "RL").upper()
    names = list(acc)
    heads = {"base": "base", "sft": "SFT"}
    lines = [
        f"| exact-match accuracy, {ev['num_prompts']} held-out questions | "
        + " | ".join(heads.get(n, label) for n in names)
        + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    sampled = f"temperature {ev['temperature']:g}, {ev['samples_per_prompt']} per question"
    rows = [("greedy (temperature 0)", ["greedy"]), (f"sampled ({sampled})", ["sampled"])]
    for kind in world.QUIZ_KINDS:
        rows += [(f"{kind}, greedy", ["by_kind", kind, "greedy"])]
        rows += [(f"{kind}, sampled", ["by_kind", kind, "sampled"])]
    for title, keys in rows:
        cells = []
        for n in names:
            value = acc[n]
            for key in keys:
                value = value[key]
            cells.append("-" if value is None else f"{value:.3f}")
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    words = " | ".join(f"{acc[n]['words']:.1f}" for n in names)
    lines.append(f"| words per greedy answer (the reward reads the first answer only) | {words} |")
    return "\n".join(lines)


def curve_line(ev: dict[str, Any]) -> str:
    """The RL stage's training reward, first steps against last, in one sentence ("" if none)."""
    label, curve = ev.get("rl_label", "RL").upper(), ev.get("training", {})
    if not curve:
        return ""
    return (
        f"{label} training reward (accuracy of its temperature-"
        f"{ev.get('rollout_temperature', 1.0):g} samples): {curve['reward_first']:.3f} over the "
        f"first {curve['window']} steps, {curve['reward_last']:.3f} over the last "
        f"{curve['window']} of {curve['steps']}; KL to SFT {curve['kl_last']:.3f} nats per "
        "response there."
    )


def write_report(root: Path, ev: dict[str, Any]) -> None:
    """eval.json, samples.jsonl (each question, its answer, each model's greedy answer) and
    report.md into the run folder."""
    ev = dict(ev)
    samples = ev.pop("samples", [])
    (root / "eval.json").write_text(json.dumps(ev, indent=1) + "\n")
    (root / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    text = [
        "# InstructRay demo: a verifiable task",
        "",
        "The demo world's few-shot and continuation questions have one right answer each. A "
        "base model pretrained on the world's unfiltered text, fine-tuned on the labeler's "
        f"demonstrations (SFT), then trained with {ev.get('rl_label', 'RL').upper()} against an "
        "exact-match reward (1 when the answer before the first full stop is the right value, "
        "else 0), the KL to the SFT model in the loss; judged on "
        f"{ev['num_prompts']} fresh draws of questions (the world is small: many were also "
        "training prompts, word for word).",
        "",
        table(ev),
        "",
        curve_line(ev),
        "",
    ]
    (root / "report.md").write_text("\n".join(text))


def run_verifiable(cfg: Config, folder: RunFolder) -> RunFolder:
    """Base LM -> SFT -> ppo.estimator against exact_match -> accuracy, in one run folder."""
    from instructray.orchestrator.model_specs import resolve_models
    from instructray.orchestrator.ppo.run import run_ppo
    from instructray.orchestrator.supervised import run_sft

    root, name = folder.path, rl_name(cfg)
    print(f"InstructRay demo, verifiable task: base -> SFT -> {name.upper()} on exact match")
    connect(cfg)
    resolve_models(cfg, need_reward=False)
    paths = write_quiz_data(root / "data", cfg)
    print(f"[1/4] base model: pretraining {cfg.model.policy} briefly on the world's text")
    base = model_folder(str(run_sft(base_stage_config(cfg, paths["base"])).final_dir))
    print("[2/4] SFT on the labeler's demonstrations")
    sft = model_folder(str(run_sft(sft_stage_config(cfg, base, paths["demonstrations"])).final_dir))
    print(
        f"[3/4] {name.upper()}: {cfg.run.steps} steps x {cfg.rollout.prompts_per_step} quiz "
        f"prompts x {cfg.rollout.samples_per_prompt} samples, reward {REWARD}"
    )
    rl = model_folder(str(run_ppo(grpo_stage_config(cfg, sft, paths["prompts"])).final_dir))
    print(f"[4/4] accuracy on {cfg.eval.num_prompts} held-out quiz questions")
    ev = evaluate_accuracy(cfg, {"base": base, "sft": sft, name: rl})
    ev["rl_label"], ev["rollout_temperature"] = name, cfg.rollout.temperature
    ev["training"] = training_curve(read_metrics(root / name / "metrics.jsonl"))
    write_report(root, ev)
    print(table(ev))
    print(curve_line(ev))
    print(f"run folder: {root} (report.md, eval.json, samples.jsonl; base/ sft/ {name}/)")
    return folder
