"""The demo world's data sets as the files a user would bring: base text, demonstrations, PPO
prompts and PPO-ptx's pretraining text (JSONL)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from instructray.orchestrator.config import Config
from instructray.orchestrator.demo import world


def _write(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def write_world_data(folder: Path, cfg: Config) -> dict[str, str]:
    """The world's text sets as JSONL files in folder. -> {name: path}."""
    d, seed = cfg.demo, cfg.run.seed
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    base = world.prompts(d.base_examples, seed)
    demos = world.prompts(d.demonstrations, seed + 1)
    ppo = world.prompts(d.ppo_prompts, seed + 2)
    paths = {
        "base": _write(
            folder / "base_text.jsonl",
            [
                {
                    "prompt": p.text,
                    "response": world.base_response(p, rng),
                    "user_id": f"web{i % 500}",
                }
                for i, p in enumerate(base)
            ],
        ),
        "demonstrations": _write(
            folder / "demonstrations.jsonl",
            [
                {
                    "prompt": p.text,
                    "response": world.ideal_response(p, rng),
                    "user_id": f"u{i % 64}",
                }
                for i, p in enumerate(demos)
            ],
        ),
        "prompts": _write(
            folder / "prompts.jsonl",
            [{"prompt": p.text, "user_id": f"u{i % 64}"} for i, p in enumerate(ppo)],
        ),
    }
    # PPO-ptx's pretraining text: the base model's own, whole (its prompt and its reply)
    base_rows = [json.loads(line) for line in Path(paths["base"]).read_text().splitlines()]
    paths["pretrain"] = _write(
        folder / "pretrain.jsonl",
        [{"text": cfg.sft.template.format(prompt=r["prompt"]) + r["response"]} for r in base_rows],
    )
    return paths
