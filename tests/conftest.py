"""Session-wide fixtures: tiny models built once per test session in a temp folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from instructray.actors.tiny_models import resolve


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


@pytest.fixture(scope="session")
def tok(tiny_policy):
    """The tiny models' tokenizer (byte-level BPE with a chat template)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_policy)


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory):
    """One isolated local Ray for the session, on loopback; shut down at the end.

    `address="local"` never joins a cluster recorded by an earlier `ray start`. 8 logical CPUs let
    learner ranks and scorer actors (1 CPU each) fit on a 2-core machine.
    """
    import ray

    from instructray.orchestrator.cluster import loopback_only

    loopback_only()  # every port of this Ray on 127.0.0.1, as the embedded default has it
    ray.init(
        address="local",
        num_cpus=8,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
        log_to_driver=True,
        runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).parent / "support")}},
    )
    yield ray
    ray.shutdown()
