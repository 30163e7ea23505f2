"""The demo's report: `eval.json`, `report.md`, a PNG plot of reward and KL per PPO step, and
`samples.jsonl` (every held-out prompt with the base, SFT and PPO answers).

The plot is drawn with Pillow (already installed with the stack), so the report needs no plotting
library.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MODELS = ("base", "sft", "ppo")


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _win(ev: dict[str, Any], key: str) -> str:
    if key not in ev:
        return ""
    lo, hi = ev[f"{key}_ci95"]
    return f"{_fmt(ev[key])} [{_fmt(lo)}, {_fmt(hi)}]"


def table(ev: dict[str, Any]) -> str:
    """The evaluation as a Markdown table (also what the demo prints); a PPO-ptx column when
    the run trained one, the alignment-tax row when it was measured."""
    models = MODELS + (("ppo_ptx",) if "win_rate_ppo_ptx_vs_sft" in ev else ())
    names = {"base": "base", "sft": "SFT", "ppo": "PPO", "ppo_ptx": "PPO-ptx"}
    rude = ev["rude_rate"]

    def row(label: str, cells: list[str]) -> str:
        return f"| {label} | " + " | ".join(cells) + " |"

    def per_model(label: str, values: dict[str, Any], digits: int = 3) -> str:
        return row(label, [_fmt(values.get(m), digits) for m in models])

    ptx_before = [f"{_win(ev, 'win_rate_ppo_ptx_vs_sft')} vs SFT"] if len(models) > 3 else []
    lines = [
        row("measure", [names[m] for m in models]),
        "|---" * (len(models) + 1) + "|",
        row(
            "labeler prefers it over the stage before (95% CI)",
            [
                "",
                f"{_win(ev, 'win_rate_sft_vs_base')} vs base",
                f"{_win(ev, 'win_rate_ppo_vs_sft')} vs SFT",
                *ptx_before,
            ],
        ),
        row(
            "labeler prefers it over the base model (95% CI)",
            ["", _win(ev, "win_rate_sft_vs_base"), _win(ev, "win_rate_ppo_vs_base")]
            + ([_win(ev, "win_rate_ppo_ptx_vs_base")] if len(models) > 3 else []),
        ),
        per_model("truthfulness (share of stated facts that are true)", ev["truthfulness"]),
    ]
    for tone in ("respectful", "none", "toxic"):
        lines.append(per_model(f"rude-word rate, instruction: {tone}", rude[tone]))
    lines.append(per_model("reward-model score", {"base": None, **ev["rm_score"]}))
    lines.append(
        per_model("KL to SFT (nats per response)", {"sft": 0.0, "ppo": ev["kl_to_sft"]}, 3)
    )
    if ev.get("lm_loss_base_text"):
        lines.append(
            per_model(
                "alignment tax: LM loss on held-out base-model text (nats per token)",
                ev["lm_loss_base_text"],
            )
        )
    return "\n".join(lines)


def agreement_line(a: dict[str, Any]) -> str:
    """The simulated labelers' agreement beside InstructGPT's labelers'."""
    return (
        f"Labelers' agreement: {a['labelers']} simulated labelers ranked the same {a['tasks']} "
        f"answer sets through the labeling service and ordered {_fmt(a['agreement'])} of answer "
        f"pairs alike (InstructGPT's labelers: 0.726)."
    )


PPO_STAGES = ("ppo", "ppo-ptx")  # the demo's PPO stages, each a folder of the run


def ppo_stages(root: Path) -> dict[str, list[dict[str, Any]]]:
    """The metrics rows of each PPO stage the demo run in `root` trained."""
    from instructray.orchestrator.output import read_metrics

    found = [(name, root / name / "metrics.jsonl") for name in PPO_STAGES]
    return {name: read_metrics(path) for name, path in found if path.exists()}


# The panels of plot.png: a metric each, one line per PPO stage that logged it.
PANELS = (
    ("reward/mean", "mean reward (RM score)"),
    ("kl/mean", "KL to SFT (nats per response)"),
    ("ptx/loss", "LM loss on the base model's text (PPO-ptx)"),
)


def plot(stages: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Reward, KL and (where a stage trained with PPO-ptx) its LM loss per step, one line per
    PPO stage, on a step axis, as a PNG (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (key, title)
        for key, title in PANELS
        if any(r.get(key) is not None for rows in stages.values() for r in rows)
    ]
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(7.2, 2.4 * len(panels) + 0.6), sharex=True, squeeze=False
    )
    for ax, (key, title) in zip(axes[:, 0], panels, strict=True):
        for i, (name, rows) in enumerate(stages.items()):  # a stage keeps its colour
            points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
            if points:
                ax.plot(*zip(*points, strict=True), label=name, color=f"C{i}", linewidth=1.5)
        ax.set_title(title, fontsize=10, loc="left")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    axes[-1, 0].set_xlabel("PPO step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def probe_table(probe: dict[str, dict[str, float]]) -> str:
    """The RM probe as a Markdown table: hand-made answers to every held-out prompt, each
    changing one thing, with the labeler's hidden score and the RM's (normalized) score."""
    lines = [
        "| answer (to every held-out prompt) | labeler's hidden score | reward model's score |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {_fmt(v['labeler'], 2)} | {_fmt(v['rm'], 2)} |" for k, v in probe.items()]
    return "\n".join(lines)


def write_report(root: Path, ev: dict[str, Any], stages: dict[str, list[dict[str, Any]]]) -> None:
    """eval.json, plot.png (each PPO stage's metrics rows by stage name) and report.md into the
    run folder."""
    ev = dict(ev)
    samples = ev.pop("samples", [])
    (root / "eval.json").write_text(json.dumps(ev, indent=1) + "\n")
    (root / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    plot(stages, root / "plot.png")
    text = [
        "# InstructRay demo: the InstructGPT story in miniature",
        "",
        "A base model pretrained on the synthetic world's unfiltered text, fine-tuned on the",
        "simulated labeler's demonstrations (SFT), a reward model trained on the labeler's",
        "rankings of SFT and base samples, and PPO against it with a KL penalty to the SFT model;",
        f"judged on {ev['num_prompts']} held-out prompts by the labeler (noisy, as labelers are).",
        "",
        table(ev),
        "",
        "Win rates count a tie as half a win.",
        "",
        *([agreement_line(ev["labelers_agreement"]), ""] if ev.get("labelers_agreement") else []),
        "![reward and KL per step of each PPO stage](plot.png)",
        "",
    ]
    if ev.get("lm_loss_base_text"):
        text += [
            "The alignment tax: each model's LM loss on held-out text of the kind the base model",
            "was pretrained on (lower: more of what pretraining taught is kept). PPO-ptx, where",
            "trained, is the same PPO plus gamma x the LM loss of the base model's text in each",
            "optimizer step (InstructGPT eq. 2).",
            "",
        ]
    if ev.get("rm_probe"):
        text += ["## What the reward model learned", "", probe_table(ev["rm_probe"]), ""]
    (root / "report.md").write_text("\n".join(text))
