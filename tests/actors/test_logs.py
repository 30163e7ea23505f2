"""What actors print: libraries at the run's level, the lines of a working run that read like
failures left out (and kept at debug)."""

from __future__ import annotations

import logging
import warnings

import pytest

from instructray.actors import logs

RELOAD = "vllm.model_executor.model_loader.reload.layerwise"


@pytest.fixture
def seen():
    """Messages that reach the handler of vLLM's logger; levels and filters restored after."""
    names = [*logs.LIBRARIES, *logs.EXPECTED]
    saved = {n: (logging.getLogger(n).level, list(logging.getLogger(n).filters)) for n in names}
    out: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: out.append(record.getMessage())
    logging.getLogger("vllm").addHandler(handler)
    with warnings.catch_warnings():
        yield out
    logging.getLogger("vllm").removeHandler(handler)
    for n, (level, filters) in saved.items():
        logging.getLogger(n).setLevel(level)
        logging.getLogger(n).filters[:] = filters


def test_expected_lines_are_dropped_and_real_warnings_kept(seen, monkeypatch):
    monkeypatch.setenv(logs.LEVEL_ENV, "warning")
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "WARNING")
    logs.quiet_libraries()
    reload = logging.getLogger(RELOAD)
    reload.warning("%s: Failed to load weights", "ParallelLMHead")  # a tied lm_head
    reload.warning("KV cache is full")  # a real warning
    reload.info("Reloading weights inplace...")  # below the run's level
    assert seen == ["KV cache is full"]
    assert logging.getLogger("transformers").level == logging.WARNING


def test_debug_keeps_everything(seen, monkeypatch):
    monkeypatch.setenv(logs.LEVEL_ENV, "debug")
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "DEBUG")
    logs.quiet_libraries()
    reload = logging.getLogger(RELOAD)
    reload.warning("ParallelLMHead: Failed to load weights")
    reload.debug("step details")
    assert seen == ["ParallelLMHead: Failed to load weights", "step details"]
