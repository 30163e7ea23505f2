"""Session-wide fixtures: tiny models built once per test session in a temp folder."""

from __future__ import annotations

import pytest

from actors.tiny_models import resolve


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """Cache folder for tiny:// models of this test session."""
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def tiny_policy(tiny_dir) -> str:
    """Folder of a tiny Qwen2 causal LM (head_dim 64) with its tokenizer."""
    return resolve("tiny://policy", tiny_dir)


@pytest.fixture(scope="session")
def tiny_reward(tiny_dir) -> str:
    """Folder of a tiny Qwen2 sequence-classification reward model with its tokenizer."""
    return resolve("tiny://reward", tiny_dir)
