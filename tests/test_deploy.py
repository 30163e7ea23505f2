"""Deployment files load and pass their owners' checks."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).parents[1]


def test_cluster_yaml_passes_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load((ROOT / "cluster.yaml").read_text()))
    validate_config(config)  # raises on a schema error
    head = config["head_start_ray_commands"]
    assert any("--dashboard-host=127.0.0.1" in c and "RAY_AUTH_MODE=token" in c for c in head)
