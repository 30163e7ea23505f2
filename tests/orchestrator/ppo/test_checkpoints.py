"""The checkpoint folder protocol: atomic, `latest` written last, the last N kept."""

from __future__ import annotations

import pytest

from instructray.orchestrator.ppo.checkpoints import CheckpointError, Checkpoints, read_driver_state


def _writer(step: int, fail: bool = False):
    def write(folder):
        (folder / "weights.bin").write_bytes(b"x" * step)
        if fail:
            raise OSError("disk full")
        return {"step": step}

    return write


def test_save_names_the_newest_in_latest_and_keeps_the_last_n(tmp_path):
    ckpt = Checkpoints(tmp_path, keep_last=2)
    for step in (2, 4, 6):
        ckpt.save(step, _writer(step))
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-000006"
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == [
        "step-000004",
        "step-000006",
    ]
    assert read_driver_state(ckpt.latest()) == {"step": 6}


def test_a_crash_while_writing_leaves_the_previous_checkpoint_in_force(tmp_path):
    ckpt = Checkpoints(tmp_path, keep_last=2)
    ckpt.save(2, _writer(2))
    with pytest.raises(OSError, match="disk full"):
        ckpt.save(4, _writer(4, fail=True))
    assert ckpt.latest().name == "step-000002"
    assert not (tmp_path / "checkpoints" / "step-000004").exists()
    assert ckpt.resolve("auto").name == "step-000002"


def test_resolve(tmp_path):
    ckpt = Checkpoints(tmp_path, keep_last=1)
    assert ckpt.resolve("") is None
    assert ckpt.resolve("auto") is None  # nothing yet: a fresh start
    with pytest.raises(CheckpointError, match="not a complete checkpoint folder"):
        ckpt.resolve(str(tmp_path / "nowhere"))
    path = ckpt.save(3, _writer(3))
    assert ckpt.resolve(str(path)) == path
