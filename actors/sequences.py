"""One padded layout for (prompt, response) sequences, shared by every role that runs a forward.

Prompts are left-padded to P tokens and responses right-padded to R tokens, so response token t of
every row sits at column P + t and is predicted by the hidden state at column P - 1 + t: one slice
serves the whole batch for log-probs (policy, reference) and values (critic).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from instructray.actors.lora import is_lora
from instructray.kernels import logprobs_from_hidden


def load_tokenizer(path: str, trust_remote_code: bool = False):
    """A model's tokenizer, padding with EOS when it has no pad token of its own (the padding
    is masked everywhere, so which id pads does not matter; the pre-flight check says so)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@dataclass
class SequenceBatch:
    """Token ids of B (prompt, response) pairs in the shared layout."""

    input_ids: torch.Tensor  # (B, P + R) long
    attention_mask: torch.Tensor  # (B, P + R) long, 0 on padding
    position_ids: torch.Tensor  # (B, P + R) long, counts from each row's first real token
    response_mask: torch.Tensor  # (B, R) float, 1 on response tokens
    prompt_len: int  # P

    @property
    def response_ids(self) -> torch.Tensor:  # (B, R)
        return self.input_ids[:, self.prompt_len :]

    def select(self, rows: slice | torch.Tensor) -> SequenceBatch:
        """The given rows (a slice, or an index tensor: a copy), in the same layout (same P)."""
        return SequenceBatch(
            self.input_ids[rows],
            self.attention_mask[rows],
            self.position_ids[rows],
            self.response_mask[rows],
            self.prompt_len,
        )

    def trimmed(self) -> SequenceBatch:
        """The same rows without the columns that are padding in every row (the prompts' common
        left padding, the responses' common right padding), in the same layout: P' <= P and
        R' <= R (at least 1), each response token at P' + t. A forward of it gives what one of
        the full width gives on the kept columns; to_width(x, R) puts a (b, R') result back."""
        real = self.attention_mask.bool().any(0)  # (P + R,)
        p = self.prompt_len
        first = int(real[:p].long().argmax()) if bool(real[:p].any()) else p
        after = real[p:].nonzero()
        width = max(1, int(after.max()) + 1) if after.numel() else 1
        if first == 0 and width == self.response_mask.shape[1]:
            return self
        cols = slice(first, p + width)
        return SequenceBatch(
            self.input_ids[:, cols],
            self.attention_mask[:, cols],
            self.position_ids[:, cols],
            self.response_mask[:, :width],
            p - first,
        )

    def sizes(self) -> list[tuple[int, int]]:
        """Each row's (prompt tokens, response tokens)."""
        p = self.attention_mask[:, : self.prompt_len].sum(-1)
        r = self.attention_mask[:, self.prompt_len :].sum(-1)
        return list(zip(p.tolist(), r.tolist(), strict=True))

    def to(self, device: torch.device | str) -> SequenceBatch:
        return SequenceBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.position_ids.to(device),
            self.response_mask.to(device),
            self.prompt_len,
        )


@dataclass
class Experience:
    """One PPO batch as the learner trains on it: B rows in the SequenceBatch layout.

    With gae_in_learner (ppo.old_values: train; auto where the critic steps once per rollout
    batch) the driver sends token rewards, and the critic's own training forward gives GAE its
    values; otherwise it sends advantages, and with a critic old_values and returns too."""

    batch: SequenceBatch
    # (B, R) log pi_old of each sampled token (engine or learner); None: the policy's training
    # forward gives them (ppo.old_logprobs train: one policy step per batch)
    old_logprobs: torch.Tensor | None
    rewards: torch.Tensor | None = (
        None  # (B, R) score on the last token - beta * KL [gae_in_learner]
    )
    old_values: torch.Tensor | None = None  # (B, R) the critic at rollout time [else]
    advantages: torch.Tensor | None = None  # (B, R) GAE, whitened if ppo.whiten_advantages [else]
    returns: torch.Tensor | None = None  # (B, R) advantages + old_values [else]
    tis_weights: torch.Tensor | None = None  # (B, R) truncated importance weights [ppo.tis_cap]
    ref_logprobs: torch.Tensor | None = None  # (B, R) the reference's [ppo.kl_loss_coef > 0]
    # (B, R) the engines' [no old_logprobs, with TIS: the learner weighs by min(pi_old / pi_engine,
    # ppo.tis_cap) with the training forward's pi_old]
    rollout_logprobs: torch.Tensor | None = None

    @property
    def gae_in_learner(self) -> bool:
        return self.rewards is not None

    def tensors(self) -> dict[str, torch.Tensor]:
        """The per-token fields this batch carries, by name."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name != "batch" and getattr(self, f.name) is not None
        }

    def to(self, device: torch.device | str) -> Experience:
        moved = {k: torch.as_tensor(v).to(device) for k, v in self.tensors().items()}
        return replace(self, batch=self.batch.to(device), **moved)

    def shards(self, n: int) -> list[Experience]:
        """n contiguous row chunks, cloned: a view would pickle the whole batch to every rank."""
        b = self.batch.input_ids.shape[0]
        if b % n:
            raise ValueError(f"learner train: {b} rows do not split evenly over {n} ranks")
        size = b // n
        out = []
        for i in range(n):
            rows = torch.arange(i * size, (i + 1) * size)  # an index: select copies
            chunk = {k: v[rows] for k, v in self.tensors().items()}
            out.append(replace(self, batch=self.batch.select(rows), **chunk))
        return out


def to_width(x: torch.Tensor, width: int) -> torch.Tensor:
    """A (b, R') result of a trimmed batch's forward as (b, width): zeros on the right (the
    trimmed columns are padding in every row)."""
    return torch.nn.functional.pad(x, (0, width - x.shape[-1])) if x.shape[-1] < width else x


def make_sequence_batch(
    prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int
) -> SequenceBatch:
    """Left-pad prompts and right-pad responses into one (B, P + R) batch."""
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(response_ids)} responses")
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("empty prompt in batch")
    p_len = max(len(p) for p in prompt_ids)
    r_len = max(1, max(len(r) for r in response_ids))
    b = len(prompt_ids)
    input_ids = torch.full((b, p_len + r_len), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((b, p_len + r_len), dtype=torch.long)
    response_mask = torch.zeros((b, r_len), dtype=torch.float32)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids, strict=True)):
        input_ids[i, p_len - len(p) : p_len] = torch.tensor(p, dtype=torch.long)
        input_ids[i, p_len : p_len + len(r)] = torch.tensor(r, dtype=torch.long)
        attention_mask[i, p_len - len(p) : p_len + len(r)] = 1
        response_mask[i, : len(r)] = 1.0
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return SequenceBatch(input_ids, attention_mask, position_ids, response_mask, p_len)


def text_batch(sequences: list[list[int]], pad_id: int = 0) -> SequenceBatch:
    """Whole texts as a batch whose "responses" are tokens 1..L-1 of each (the first token is
    the prompt): its response log-probs are the LM's log-likelihood of the text."""
    return make_sequence_batch([s[:1] for s in sequences], [s[1:] for s in sequences], pad_id)


def trunk(model: torch.nn.Module) -> torch.nn.Module:
    """The decoder under a head, as transformers names it for the family (`base_model`: `.model`
    for Qwen and Llama, `.transformer` for GPT-2, `.gpt_neox` for GPT-NeoX, ...). A LoRA model's
    adapters live inside its base model's layers: its trunk is the base model's."""
    if is_lora(model):
        model = model.get_base_model()
    return model.base_model


def score_head(model: torch.nn.Module) -> torch.nn.Module:
    """The scalar head of a sequence-classification model (`score` in the decoder families)."""
    head = getattr(model, "score", None)
    if head is None:
        raise ValueError(f"{type(model).__name__} has no `score` head (not a decoder reward model)")
    return head


def hidden_states(backbone: torch.nn.Module, batch: SequenceBatch) -> torch.Tensor:
    """Last hidden states of a decoder backbone. -> (B, P + R, H)."""
    out = backbone(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
    )
    return out.last_hidden_state


def response_logprobs(
    causal_lm: torch.nn.Module,
    batch: SequenceBatch,
    chunk_size: int = 1024,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of the response tokens under a causal LM, chunked over the vocabulary. -> (B, R).

    Masked (padding) positions hold garbage log-probs; callers mask them.
    """
    hidden = hidden_states(trunk(causal_lm), batch)  # (B, P + R, H)
    p, r = batch.prompt_len, batch.response_mask.shape[1]
    predicting = hidden[:, p - 1 : p - 1 + r]  # (B, R, H): state before each response token
    weight = causal_lm.get_output_embeddings().weight  # (V, H)
    return logprobs_from_hidden(
        predicting, weight, batch.response_ids, chunk_size, temperature, with_entropy=with_entropy
    )


def token_values(value_model: torch.nn.Module, batch: SequenceBatch) -> torch.Tensor:
    """Per-token outputs of a scalar-head model (critic) at each response step. -> (B, R)."""
    hidden = hidden_states(trunk(value_model), batch)  # (B, P + R, H)
    p, r = batch.prompt_len, batch.response_mask.shape[1]
    return score_head(value_model)(hidden[:, p - 1 : p - 1 + r]).squeeze(-1).float()


def sequence_scores(value_model: torch.nn.Module, batch: SequenceBatch) -> torch.Tensor:
    """Scalar-head output at each row's last real token (the reward model's score). -> (B,)."""
    hidden = hidden_states(trunk(value_model), batch)  # (B, P + R, H)
    last = batch.attention_mask.shape[1] - 1 - batch.attention_mask.flip(-1).argmax(-1)  # (B,)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return score_head(value_model)(hidden[rows, last]).squeeze(-1).float()
