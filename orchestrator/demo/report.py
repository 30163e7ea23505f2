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


def table(ev: dict[str, Any]) -> str:
    """The evaluation as a Markdown table (also what the demo prints)."""
    lo, hi = ev["win_rate_ppo_vs_sft_ci95"]
    slo, shi = ev["win_rate_sft_vs_base_ci95"]
    plo, phi = ev["win_rate_ppo_vs_base_ci95"]
    rude = ev["rude_rate"]
    lines = [
        "| measure | base | SFT | PPO |",
        "|---|---|---|---|",
        f"| labeler prefers it over the stage before (95% CI) | | "
        f"{_fmt(ev['win_rate_sft_vs_base'])} [{_fmt(slo)}, {_fmt(shi)}] vs base | "
        f"{_fmt(ev['win_rate_ppo_vs_sft'])} [{_fmt(lo)}, {_fmt(hi)}] vs SFT |",
        f"| labeler prefers it over the base model (95% CI) | | "
        f"{_fmt(ev['win_rate_sft_vs_base'])} [{_fmt(slo)}, {_fmt(shi)}] | "
        f"{_fmt(ev['win_rate_ppo_vs_base'])} [{_fmt(plo)}, {_fmt(phi)}] |",
        "| truthfulness (share of stated facts that are true) | "
        + " | ".join(_fmt(ev["truthfulness"][m]) for m in MODELS)
        + " |",
    ]
    for tone in ("respectful", "none", "toxic"):
        lines.append(
            f"| rude-word rate, instruction: {tone} | "
            + " | ".join(_fmt(rude[tone].get(m)) for m in MODELS)
            + " |"
        )
    lines.append(
        f"| reward-model score | | {_fmt(ev['rm_score']['sft'])} | {_fmt(ev['rm_score']['ppo'])} |"
    )
    lines.append(f"| KL to SFT (nats per response) | | 0 | {_fmt(ev['kl_to_sft'])} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Reward and KL per PPO step, two panels, as a PNG."""
    from PIL import Image, ImageDraw

    width, height, pad = 720, 520, 50
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    panels = [
        ("reward/mean", "mean reward (RM score)", (31, 119, 180)),
        ("kl/mean", "KL to SFT", (214, 39, 40)),
    ]
    panel_h = (height - pad) // 2
    for i, (key, title, color) in enumerate(panels):
        top = i * panel_h + pad // 2
        box = (pad, top + 20, width - pad // 2, top + panel_h - 20)
        draw.rectangle(box, outline="black")
        draw.text((pad, top + 4), title, fill="black")
        points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if len(points) < 2:
            continue
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        x0, x1 = min(xs), max(xs)
        y0, y1 = min(ys), max(ys)
        if y1 == y0:
            y1 = y0 + 1.0

        sx = (box[2] - box[0]) / max(x1 - x0, 1)
        sy = (box[3] - box[1]) / (y1 - y0)
        pixels = [(box[0] + (x - x0) * sx, box[3] - (y - y0) * sy) for x, y in points]
        draw.line(pixels, fill=color, width=2)
        draw.text((box[0] + 4, box[1] + 2), f"{y1:.3g}", fill="gray")
        draw.text((box[0] + 4, box[3] - 12), f"{y0:.3g}", fill="gray")
        draw.text((box[2] - 60, box[3] + 4), f"step {x1}", fill="gray")
    image.save(path)


def probe_table(probe: dict[str, dict[str, float]]) -> str:
    """The RM probe as a Markdown table: hand-made answers to every held-out prompt, each
    changing one thing, with the labeler's hidden score and the RM's (normalized) score."""
    lines = [
        "| answer (to every held-out prompt) | labeler's hidden score | reward model's score |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {_fmt(v['labeler'], 2)} | {_fmt(v['rm'], 2)} |" for k, v in probe.items()]
    return "\n".join(lines)


def write_report(root: Path, ev: dict[str, Any], ppo_rows: list[dict[str, Any]]) -> None:
    """eval.json, plot.png and report.md into the run folder."""
    ev = dict(ev)
    samples = ev.pop("samples", [])
    (root / "eval.json").write_text(json.dumps(ev, indent=1) + "\n")
    (root / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    plot(ppo_rows, root / "plot.png")
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
        "Win rates count a tie as half a win. ![reward and KL per PPO step](plot.png)",
        "",
    ]
    if ev.get("rm_probe"):
        text += ["## What the reward model learned", "", probe_table(ev["rm_probe"]), ""]
    (root / "report.md").write_text("\n".join(text))
