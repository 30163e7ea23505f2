"""A supervised stage's ranks as plain Ray actors, for tests that step them one step at a time.

The stages run under Ray Train (actors/learner/supervised.py `train_loop`); these actors build
the same task (SFTTask / RewardModelTask) in their own gloo group on loopback and call the same
`train_step`, so a test can give each rank the examples it wants.
"""

from __future__ import annotations

import ray
import safetensors.torch
import torch


@ray.remote(num_cpus=1)
class SupervisedRank:
    def __init__(self, cfg, stage: str, model_path: str, pad_id: int, rank: int, world: int, port):
        from instructray.actors.learner.engine import init_distributed
        from instructray.actors.learner.supervised import TASKS

        init_distributed(rank, world, "127.0.0.1", port, "gloo", cfg.run.timeout_s)
        torch.manual_seed(cfg.run.seed)  # a new reward head starts equal on every rank
        self.task = TASKS[stage](cfg, model_path, pad_id)

    def ready(self) -> bool:
        return True

    def step(self, examples) -> dict[str, float]:
        from instructray.actors.learner.supervised import train_step

        return train_step(self.task, examples)

    def weights(self) -> bytes:
        """The model's weights (safetensors bytes); every rank gathers, rank 0's are returned."""
        from instructray.actors.learner.export import gathered_state_dict

        state = gathered_state_dict(self.task.hf_model())
        if state is None:
            return b""
        return safetensors.torch.save({k: v.clone() for k, v in state.items()})
