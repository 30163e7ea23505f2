"""How often the demo's simulated labelers agree, measured as InstructGPT measured its people's:
two labelers rank the same answer sets (the evaluated models' answers to held-out prompts)
through the labeling service's HTTP API, as bots, and the service reports the share of answer
pairs they order alike. InstructGPT's labelers agreed on 72.6% of pairs."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from instructray.orchestrator.labeling.service import Bots, Service, wait_for_rankings
from instructray.orchestrator.labeling.store import Store, db_url

INSTRUCTGPT_AGREEMENT = 0.726
BATCH = "agreement"
TIMEOUT_S = 600.0


def labelers_agreement(
    prompts: list[str],
    answer_sets: list[list[str]],
    rank: Callable[[str, list[str]], list[int]],
    labelers: int = 2,
) -> dict[str, Any]:
    """Publish each prompt with its distinct answers (two or more) to a fresh service (SQLite in
    a temporary folder), let `labelers` bots that rank with `rank` (a labeler function: the
    world's noisy labeler in the demo) rank every task, and return {"agreement", "tasks",
    "rankings", "labelers"}."""
    rows = []
    for prompt, answers in zip(prompts, answer_sets, strict=True):
        distinct = list(dict.fromkeys(a for a in answers if a))
        if len(distinct) >= 2:
            rows.append({"prompt": prompt, "responses": distinct})
    with tempfile.TemporaryDirectory(prefix="instructray-agreement-") as tmp:
        store = Store(db_url(str(Path(tmp) / "labels.db")), gold_every=0)
        try:
            store.publish(rows, overlap=labelers, batch=BATCH)
            tokens = [store.add_labeler(f"labeler-{i}") for i in range(labelers)]
            service = Service(store).start()
            bots = Bots(service.url, tokens, rank).start()
            try:
                status = wait_for_rankings(store, BATCH, labelers * len(rows), TIMEOUT_S)
            finally:
                bots.stop()
                service.stop()
            if bots.errors:
                raise RuntimeError(f"demo agreement: a simulated labeler stopped: {bots.errors[0]}")
        finally:
            store.close()
    return {
        "agreement": status["quality"]["agreement"],
        "tasks": status["tasks"],
        "rankings": status["rankings"],
        "labelers": labelers,
    }
