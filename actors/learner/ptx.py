"""PPO-ptx (InstructGPT eq. 2): the policy's objective adds gamma x the log-likelihood of
pretraining text, so that PPO does not unlearn what pretraining taught (the "alignment tax").

`Pretraining` is one learner rank's share: the tokenized texts and, for each policy optimizer
step, a batch of `learner.ptx_batch_size` of them drawn with a generator seeded by the run's
seed, the rank and the train call, so a resumed run draws what the uninterrupted one drew.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from instructray.actors.learner.engine import engine_inputs
from instructray.actors.sequences import text_batch
from instructray.kernels import sft_loss


class Pretraining:
    """A rank's pretraining batches and their LM loss under the policy."""

    def __init__(self, sequences: list[list[int]], batch_size: int, seed: int, rank: int):
        if not sequences:
            raise ValueError("PPO-ptx needs pretraining texts (data.pretrain has none)")
        self.sequences, self.batch_size, self.seed, self.rank = sequences, batch_size, seed, rank
        self.rng = random.Random()

    def start(self, train_call: int) -> None:
        """Seed this train call's draws."""
        self.rng = random.Random(f"{self.seed}/ptx/{self.rank}/{train_call}")

    def next_texts(self) -> list[list[int]]:
        """The next batch_size texts, drawn uniformly with replacement."""
        picks = [self.rng.randrange(len(self.sequences)) for _ in range(self.batch_size)]
        return [self.sequences[i] for i in picks]

    def loss(self, policy: Any) -> torch.Tensor:
        """Mean negative log-likelihood per token of the next batch of texts under `policy`
        (the DeepSpeed engine around PolicyLogprobs, temperature 1): the LM loss of eq. 2."""
        batch = text_batch(self.next_texts()).to(policy.device)
        logprobs = policy(*engine_inputs(batch), temperature=1.0)  # (b, L - 1)
        return sft_loss(logprobs.float(), batch.response_mask)
