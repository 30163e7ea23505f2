"""What actors print: libraries at the run's level, the lines of a working run that read like
failures left out (and kept at debug)."""

from __future__ import annotations

import logging
import warnings

import pytest

from actors import logs


@pytest.fixture
def vllm_logger():
    logger = logging.getLogger("vllm")
    handler = logging.Handler()
    seen: list[str] = []
    handler.emit = lambda record: seen.append(record.getMessage())
    levels = {name: logging.getLogger(name).level for name in logs.LIBRARIES}
    logger.addHandler(handler)
    with warnings.catch_warnings():
        yield logger.getChild("model_executor.reload"), seen
    logger.removeHandler(handler)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_expected_lines_are_dropped_and_real_warnings_kept(vllm_logger, monkeypatch):
    child, seen = vllm_logger
    monkeypatch.setenv(logs.LEVEL_ENV, "warning")
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "WARNING")
    logs.quiet_libraries()
    logs.drop_expected()
    child.warning("ParallelLMHead: Failed to load weights")  # a tied lm_head: nothing to load
    child.warning("KV cache is full")  # a real warning
    child.info("Reloading weights inplace...")  # below the run's level
    assert seen == ["KV cache is full"]
    assert logging.getLogger("transformers").level == logging.WARNING


def test_debug_keeps_everything(vllm_logger, monkeypatch):
    child, seen = vllm_logger
    monkeypatch.setenv(logs.LEVEL_ENV, "debug")
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "DEBUG")
    logs.quiet_libraries()
    logs.drop_expected()
    child.warning("ParallelLMHead: Failed to load weights")
    child.debug("step details")
    assert seen == ["ParallelLMHead: Failed to load weights", "step details"]
