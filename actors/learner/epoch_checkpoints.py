"""The epoch checkpoints of the supervised stages (SFT, RM) under Ray Train: complete only when
their progress file, written last, lists every file with its size, each there in full."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

PROGRESS_FILE = "progress.json"  # in a checkpoint: the epochs done


def epoch_checkpoints(folders: Iterable[Path]) -> list[tuple[int, float, str]]:
    """The complete epoch checkpoints among folders: a progress file that lists every file of
    the checkpoint with its size, each there in full (a copy cut short by a crash is not).
    -> [(epochs done, modified time, folder)]."""
    out = []
    for folder in folders:
        progress = folder / PROGRESS_FILE
        try:
            state = json.loads(progress.read_text())
            complete = all(
                (folder / name).stat().st_size == size for name, size in state["files"].items()
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        if complete:
            out.append((state["epochs_done"], progress.stat().st_mtime, str(folder.resolve())))
    return out


def write_progress(folder: Path, epochs_done: int) -> None:
    """The progress file of an epoch checkpoint, written last: epochs done and every file's size."""
    files = {f.name: f.stat().st_size for f in sorted(folder.iterdir()) if f.is_file()}
    progress = {"epochs_done": epochs_done, "files": files}
    (folder / PROGRESS_FILE).write_text(json.dumps(progress))
