"""The two frozen scorers of a PPO step: RewardActor (one score per sequence) and ReferenceActor
(per-token log-probs of the SFT policy). Plain classes; the driver wraps them with `ray.remote`.

Each computes on its device (the GPU Ray gave it, else the CPU): the model lives there, every
batch moves there, and results come back to the CPU as float32."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import Any

import torch

from instructray.actors.faults import inject
from instructray.actors.logs import Named, quiet_libraries
from instructray.actors.scoring.reward_functions import (
    RewardFunction,
    columns_as_lists,
    remote_reward,
)
from instructray.actors.scoring.rule_rewards import check_scores
from instructray.actors.sequences import (
    SequenceBatch,
    load_tokenizer,
    make_sequence_batch,
    response_logprobs,
    sequence_scores,
    to_width,
)
from instructray.kernels import combine_rewards
from instructray.orchestrator.config import REWARD_MODEL, URL_SOURCE, parse_reward_sources
from instructray.orchestrator.config.functions import load_function
from instructray.orchestrator.output import report_throughput

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SCORE_STATS_FILE = "score_stats.json"  # {"mean", "std"} saved beside a trained reward model


def scorer_device(device: str | None = None) -> torch.device:
    """The device a scorer computes on: `device` if given, else the GPU Ray gave the actor (it
    sees only that one, as cuda:0), else the CPU."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        torch.cuda.set_device(0)
        return torch.device("cuda", 0)
    return torch.device("cpu")


def check_attention(attn_implementation: str, device: torch.device) -> None:
    """flash_attention_2 runs on a GPU with the flash-attn package only: one clear line at
    start instead of transformers' error at load or at the first forward."""
    if attn_implementation != "flash_attention_2":
        return
    if device.type != "cuda":
        raise ValueError(
            f"model.attn_implementation = flash_attention_2 needs a GPU, this actor computes on "
            f"{device}; use sdpa"
        )
    if importlib.util.find_spec("flash_attn") is None:
        raise ValueError(
            "model.attn_implementation = flash_attention_2 needs the flash-attn package on "
            "every GPU node (pip install flash-attn), which this one lacks; or use sdpa"
        )


def load_frozen(
    cls: Any, model_path: str, what: str, dtype: str, attn: str, device: torch.device, **kwargs: Any
) -> torch.nn.Module:
    """A scorer's model from its folder (safetensors only), on its device, in eval mode."""
    if not Path(model_path).exists():
        raise ValueError(f"{what} folder {model_path} does not exist")
    check_attention(attn, device)
    model = cls.from_pretrained(
        model_path, dtype=DTYPES[dtype], attn_implementation=attn, use_safetensors=True, **kwargs
    )
    return model.to(device).eval()


class RewardActor(Named):
    """Scores (prompt, response) pairs with a reward model, a Python reward function, a remote
    endpoint, or the weighted sum of several: `function` is reward.function as configured
    (empty: the reward model alone; else comma-separated entries, `model` naming the reward
    model at model_path), `url` reward.url (its bearer token `url_token`), `weights`
    reward.weights (empty: 1 each). `files` holds the text of reward files (path -> text, read
    where the run started); `calls` the async call policy (RewardFunction's max_concurrency,
    timeout_s, retries, call_batch_size). The reward model loads only when it is named, onto
    `device` (default: scorer_device's choice)."""

    def __init__(
        self,
        model_path: str = "",
        function: str = "",
        policy_tokenizer: str = "",
        dtype: str = "float32",
        batch_size: int = 16,
        normalize: bool = False,
        attn_implementation: str = "sdpa",
        weights: list[float] | None = None,
        device: str | None = None,
        url: str = "",
        url_token: str = "",
        files: dict[str, str] | None = None,
        calls: dict[str, Any] | None = None,
    ):
        quiet_libraries()
        self.batch_size = batch_size
        self.sources = parse_reward_sources(function, url)  # `model`, a function, `url`
        weights = list(weights or [1.0] * len(self.sources))
        if len(weights) != len(self.sources):
            raise ValueError(
                f"reward.weights has {len(weights)} weights for the {len(self.sources)} entries "
                f"of reward.function ({function!r})"
            )
        self.weights = torch.tensor(weights, dtype=torch.float32)  # (C,)
        self.fns = {
            s: RewardFunction(s, load_function(s, "reward.function", files), **(calls or {}))
            for s in self.sources
            if s not in (REWARD_MODEL, URL_SOURCE)
        }
        if url:
            fn = remote_reward(url, url_token)
            self.fns[URL_SOURCE] = RewardFunction(url, fn, key="reward.url", **(calls or {}))
        self.model = self.tokenizer = None
        self.mean, self.std = 0.0, 1.0
        self.device = torch.device("cpu")  # reward functions run in Python
        if REWARD_MODEL in self.sources:
            self.device = scorer_device(device)
            self._load_model(model_path, policy_tokenizer, dtype, normalize, attn_implementation)

    def _load_model(
        self, model_path: str, policy_tokenizer: str, dtype: str, normalize: bool, attn: str
    ) -> None:
        from transformers import AutoModelForSequenceClassification

        self.model = load_frozen(
            AutoModelForSequenceClassification,
            model_path,
            "reward model",
            dtype,
            attn,
            self.device,
            num_labels=1,
        )
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
    def model_scores(
        self, batch: SequenceBatch, prompts: list[str], responses: list[str]
    ) -> torch.Tensor:
        """The reward model's raw scores, left on self.device. -> (B,) float32."""
        if not self.same_vocab:
            enc = self.tokenizer
            p_ids = [enc(p, add_special_tokens=False)["input_ids"] for p in prompts]
            r_ids = [enc(r, add_special_tokens=False)["input_ids"] for r in responses]
            batch = make_sequence_batch(p_ids, r_ids, enc.pad_token_id)
        n = batch.input_ids.shape[0]
        chunks = [
            sequence_scores(
                self.model, batch.select(slice(i, i + self.batch_size)).trimmed().to(self.device)
            )
            for i in range(0, n, self.batch_size)
        ]
        return torch.cat(chunks).float()

    def _source_scores(
        self,
        source: str,
        batch: SequenceBatch,
        prompts: list[str],
        responses: list[str],
        columns: dict[str, list[Any]],
    ) -> torch.Tensor:
        """One source's scores, the reward model's normalized with its saved stats. -> (B,)."""
        n = batch.input_ids.shape[0]
        if source != REWARD_MODEL:
            return torch.tensor(self.fns[source](prompts, responses, columns))
        start = time.perf_counter()
        raw = self.model_scores(batch, prompts, responses).cpu()
        scores = torch.tensor(check_scores(raw, n, prompts, "reward model"))
        report_throughput("reward", int(batch.attention_mask.sum()), time.perf_counter() - start)
        return (scores - self.mean) / self.std

    def score_sources(
        self,
        batch: SequenceBatch,
        prompts: list[str],
        responses: list[str],
        columns: list[dict[str, Any]] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The score, sum_c weights[c] x source c's score, and each source's own score (the
        reward model's normalized), columns in reward.function's order. `columns`: each
        sample's prompt columns (name -> value), which reward functions get. -> (B,), (B, C)."""
        inject("reward", "score")
        by_name = columns_as_lists(columns, len(responses))
        parts = torch.stack(
            [self._source_scores(s, batch, prompts, responses, by_name) for s in self.sources],
            dim=1,
        )
        return combine_rewards(parts, self.weights), parts

    def device_name(self) -> str:
        """Where the reward model computes (the CPU for reward functions alone)."""
        return str(self.device)

    def score(
        self,
        batch: SequenceBatch,
        prompts: list[str],
        responses: list[str],
        columns: list[dict[str, Any]] | None = None,
    ) -> torch.Tensor:
        """One score per sequence: the weighted sum of score_sources. -> (B,)."""
        return self.score_sources(batch, prompts, responses, columns)[0]


class ReferenceActor(Named):
    """The frozen SFT policy: per-token log-probs of responses (chunked over the vocabulary), on
    `device` (default: scorer_device's choice)."""

    def __init__(
        self,
        model_path: str,
        dtype: str = "float32",
        batch_size: int = 16,
        chunk_size: int = 1024,
        temperature: float = 1.0,
        attn_implementation: str = "sdpa",
        device: str | None = None,
    ):
        quiet_libraries()
        from transformers import AutoModelForCausalLM

        self.device = scorer_device(device)
        self.model = load_frozen(
            AutoModelForCausalLM,
            model_path,
            "reference model",
            dtype,
            attn_implementation,
            self.device,
        )
        self.batch_size, self.chunk_size, self.temperature = batch_size, chunk_size, temperature

    @torch.no_grad()
    def device_logprobs(self, batch: SequenceBatch) -> torch.Tensor:
        """Log-probs of the response tokens, left on self.device; padding not masked.
        -> (B, R) float32."""
        n, width = batch.response_mask.shape
        chunks = [
            to_width(
                response_logprobs(
                    self.model,
                    batch.select(slice(i, i + self.batch_size)).trimmed().to(self.device),
                    self.chunk_size,
                    self.temperature,
                ),
                width,
            )
            for i in range(0, n, self.batch_size)
        ]
        return torch.cat(chunks).float()

    def device_name(self) -> str:
        """Where the reference model computes."""
        return str(self.device)

    def logprobs(self, batch: SequenceBatch) -> torch.Tensor:
        """ref_logprobs of the response tokens. -> (B, R) float32, on the CPU."""
        poison = inject("reference", "score")  # test hook: a non-finite first row
        start = time.perf_counter()
        out = self.device_logprobs(batch).cpu() * batch.response_mask
        tokens = int(batch.attention_mask.sum())
        report_throughput("reference", tokens, time.perf_counter() - start)
        if poison:
            out[0] = float("nan")
        return out
