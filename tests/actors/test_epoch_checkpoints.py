"""Which SFT/RM epoch checkpoints a resume may start from: only those copied in full."""

from __future__ import annotations

import json
import shutil

from instructray.actors.learner.epoch_checkpoints import (
    PROGRESS_FILE,
    epoch_checkpoints,
    write_progress,
)


def test_only_complete_epoch_checkpoints_are_found(tmp_path):
    done = tmp_path / "checkpoint_1"
    done.mkdir()
    (done / "model.safetensors").write_bytes(b"w" * 100)
    (done / "config.json").write_text("{}")
    write_progress(done, 1)
    assert json.loads((done / PROGRESS_FILE).read_text())["files"] == {
        "config.json": 2,
        "model.safetensors": 100,
    }
    cut = tmp_path / "checkpoint_2"  # its model copied halfway when the worker died
    shutil.copytree(done, cut)
    write_progress(cut, 2)
    (cut / "model.safetensors").write_bytes(b"w" * 50)
    torn = tmp_path / "checkpoint_3"  # the progress file itself cut short
    shutil.copytree(done, torn)
    (torn / PROGRESS_FILE).write_text('{"epochs_done": 3, "fil')
    missing = tmp_path / "checkpoint_4"  # no progress file yet
    shutil.copytree(done, missing)
    (missing / PROGRESS_FILE).unlink()
    found = epoch_checkpoints(sorted(tmp_path.iterdir()))
    assert [(epochs, folder) for epochs, _, folder in found] == [(1, str(done.resolve()))]
