"""The two frozen scorers of a PPO step: RewardActor (one score per sequence) and ReferenceActor
(per-token log-probs of the SFT policy). Plain classes; the driver wraps them with `ray.remote`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from actors.faults import inject
from actors.logs import quiet_libraries
from actors.rule_rewards import check_scores, load_function
from actors.sequences import (
    SequenceBatch,
    load_tokenizer,
    make_sequence_batch,
    response_logprobs,
    sequence_scores,
)
from orchestrator.output import report_throughput

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SCORE_STATS_FILE = "score_stats.json"  # {"mean", "std"} saved beside a trained reward model


class RewardActor:
    """Scores (prompt, response) pairs with a reward model or a Python reward function."""

    def __init__(
        self,
        model_path: str = "",
        function: str = "",
        policy_tokenizer: str = "",
        dtype: str = "float32",
        batch_size: int = 16,
        normalize: bool = False,
        attn_implementation: str = "sdpa",
    ):
        quiet_libraries()
        self.batch_size = batch_size
        self.fn = load_function(function, "reward.function") if function else None
        self.model = self.tokenizer = None
        self.mean, self.std = 0.0, 1.0
        if self.fn is not None:
            return
        from transformers import AutoModelForSequenceClassification

        if not Path(model_path).exists():
            raise ValueError(f"reward model folder {model_path} does not exist")
        self.model = AutoModelForSequenceClassification.from_pretrained(
            model_path,
            dtype=DTYPES[dtype],
            attn_implementation=attn_implementation,
            num_labels=1,
            use_safetensors=True,
        ).eval()
        self.tokenizer = load_tokenizer(model_path)
        policy_tok = load_tokenizer(policy_tokenizer) if policy_tokenizer else None
        # Same vocabulary: score the policy's token ids directly; else re-tokenize the text.
        self.same_vocab = (
            policy_tok is not None and policy_tok.get_vocab() == self.tokenizer.get_vocab()
        )
        if normalize:
            stats_path = Path(model_path) / SCORE_STATS_FILE
            if not stats_path.is_file():
                raise ValueError(f"reward.normalize is set but {stats_path} does not exist")
            stats = json.loads(stats_path.read_text())
            self.mean, self.std = float(stats["mean"]), max(float(stats["std"]), 1e-6)

    @torch.no_grad()
    def _model_scores(self, batch: SequenceBatch, prompts: list[str], responses: list[str]):
        if not self.same_vocab:
            enc = self.tokenizer
            p_ids = [enc(p, add_special_tokens=False)["input_ids"] for p in prompts]
            r_ids = [enc(r, add_special_tokens=False)["input_ids"] for r in responses]
            batch = make_sequence_batch(p_ids, r_ids, enc.pad_token_id)
        n = batch.input_ids.shape[0]
        chunks = [
            sequence_scores(self.model, batch.select(slice(i, i + self.batch_size)))
            for i in range(0, n, self.batch_size)
        ]
        return torch.cat(chunks)

    def score(self, batch: SequenceBatch, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """One score per sequence, normalized with the RM's saved stats when asked. -> (B,)."""
        inject("reward", "score")
        n = batch.input_ids.shape[0]
        if self.fn is not None:
            try:
                raw = self.fn(prompts, responses)
            except Exception as e:
                raise ValueError(f"reward function raised {type(e).__name__}: {e}") from e
            return torch.tensor(check_scores(raw, n, prompts, "reward.function"))
        start = time.perf_counter()
        raw = self._model_scores(batch, prompts, responses).float()
        scores = torch.tensor(check_scores(raw, n, prompts, "reward model"))
        report_throughput("reward", int(batch.attention_mask.sum()), time.perf_counter() - start)
        return (scores - self.mean) / self.std


class ReferenceActor:
    """The frozen SFT policy: per-token log-probs of responses (chunked over the vocabulary)."""

    def __init__(
        self,
        model_path: str,
        dtype: str = "float32",
        batch_size: int = 16,
        chunk_size: int = 1024,
        temperature: float = 1.0,
        attn_implementation: str = "sdpa",
    ):
        quiet_libraries()
        from transformers import AutoModelForCausalLM

        if not Path(model_path).exists():
            raise ValueError(f"reference model folder {model_path} does not exist")
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path,
            dtype=DTYPES[dtype],
            attn_implementation=attn_implementation,
            use_safetensors=True,
        ).eval()
        self.batch_size, self.chunk_size, self.temperature = batch_size, chunk_size, temperature

    @torch.no_grad()
    def logprobs(self, batch: SequenceBatch) -> torch.Tensor:
        """ref_logprobs of the response tokens. -> (B, R) float32."""
        poison = inject("reference", "score")  # test hook: a non-finite first row
        n, start = batch.input_ids.shape[0], time.perf_counter()
        chunks = [
            response_logprobs(
                self.model,
                batch.select(slice(i, i + self.batch_size)),
                self.chunk_size,
                self.temperature,
            )
            for i in range(0, n, self.batch_size)
        ]
        tokens = int(batch.attention_mask.sum())
        report_throughput("reference", tokens, time.perf_counter() - start)
        out = torch.cat(chunks).float() * batch.response_mask
        if poison:
            out[0] = float("nan")
        return out
