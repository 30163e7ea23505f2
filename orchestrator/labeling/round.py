"""One labeling round of a pipeline whose labeler is `human`: the current policy's samples go to
the labeling service as tasks, the run waits until people (or `labeling.bots`) have ranked
enough of them, and their rankings come back as rows of the reward model's rankings file.

The wait is a checkpoint: the tasks are published once (`labeling-N/tasks.json` records them), the
database keeps every ranking, and a stopped run resumed with `--run.resume=auto` waits on for the
same tasks. Its progress is a bar, `labeling/*` rows in `labeling-N/metrics.jsonl` and the same
numbers on the Ray dashboard.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from instructray.orchestrator.config import Config
from instructray.orchestrator.config.functions import load_function
from instructray.orchestrator.labeling.on_ray import APP_NAME, ServeApp
from instructray.orchestrator.labeling.service import Bots, Service, wait_for_rankings
from instructray.orchestrator.labeling.store import Store, db_url
from instructray.orchestrator.output import MetricsLog

logger = logging.getLogger(__name__)


def labeling_round(
    cfg: Config,
    folder: Path,
    batch: str,
    sample: Callable[[], list[dict[str, Any]]],
    provenance: dict[str, Any],
) -> list[dict[str, Any]]:
    """Publish `sample()`'s rows (once) as tasks of `batch`, serve them, wait for
    labeling.min_rankings rankings (or every task to its overlap), and return the batch's
    rankings as rows. `folder` is the round's folder in the run."""
    lab = cfg.labeling
    folder.mkdir(parents=True, exist_ok=True)
    store = Store(
        db_url(lab.db or str(folder.parent / "labeling.db")),
        ttl_s=lab.assignment_ttl_s,
        gold_every=10,
    )
    marker = folder / "tasks.json"
    try:
        if marker.exists():  # published before the run stopped: wait on for the same tasks
            task_ids = json.loads(marker.read_text())["task_ids"]
            logger.info("labeling: %s: %d tasks published before; waiting on", batch, len(task_ids))
        else:
            rows = [task_row(row, provenance) for row in sample()]
            task_ids = store.publish(rows, overlap=lab.overlap, batch=batch)
            tmp = marker.with_suffix(".tmp")
            tmp.write_text(json.dumps({"batch": batch, "task_ids": task_ids}) + "\n")
            tmp.replace(marker)
        wanted = lab.min_rankings or len(task_ids) * lab.overlap
        _wait(cfg, store, folder, batch, wanted)
        return store.export(consensus=lab.merge == "consensus" and lab.overlap > 1, batch=batch)
    finally:
        store.close()


def task_row(row: dict[str, Any], provenance: dict[str, Any]) -> dict[str, Any]:
    """A sampled row as a task: its prompt, responses and author (who may not rank it)."""
    out = {k: row[k] for k in ("prompt", "messages", "responses") if k in row}
    if row.get("author") is not None:
        out["user_id"] = row["author"]
    out["provenance"] = provenance
    return out


def _wait(cfg: Config, store: Store, folder: Path, batch: str, wanted: int) -> None:
    from ray.experimental.tqdm_ray import tqdm

    lab = cfg.labeling
    if lab.serve == "ray":
        store_args = {"ttl_s": lab.assignment_ttl_s, "gold_every": store.gold_every}
        service: Service | ServeApp = ServeApp(store.url, lab.host, lab.port, **store_args).start()
        where = f" (Ray Serve app {APP_NAME!r})"
    else:
        service, where = Service(store, lab.host, lab.port).start(), ""
    print(
        f"labeling: {batch}: {wanted} rankings wanted; labelers rank at {service.url}/{where}",
        flush=True,
    )
    bots = None
    if lab.bots:
        tokens = [
            store.add_labeler(f"bot-{batch}-{i}-{secrets.token_hex(2)}") for i in range(lab.bots)
        ]
        bots = Bots(service.url, tokens, load_function(lab.bot, "labeling.bot")).start()
    log = MetricsLog(cfg, folder, role="labeling", stage=batch)
    bar = tqdm(desc=f"labeling {batch}", total=wanted, unit="ranking")
    last = [-1]

    def progress(status: dict[str, Any]) -> None:
        done = status["rankings"]
        bar.n = min(done, wanted)
        bar.refresh()
        if done != last[0]:
            last[0] = done
            agreement = status["quality"]["agreement"]
            row = {"step": done, "labeling/rankings": done, "labeling/tasks": status["tasks"]}
            if agreement is not None:
                row["labeling/agreement"] = agreement
            log.log(row)

    try:
        wait_for_rankings(store, batch, wanted, lab.timeout_s, progress)
    finally:
        bar.close()
        log.close()
        if bots is not None:
            bots.stop()
            if bots.errors:
                logger.warning("labeling: a bot stopped: %s", bots.errors[0])
        service.stop()
