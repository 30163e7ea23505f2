"""The shared padded layout: log-probs, values and scores equal unpadded one-row forwards."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from instructray.actors.sequences import (
    Experience,
    make_sequence_batch,
    response_logprobs,
    sequence_scores,
    to_width,
    token_values,
)

PROMPTS = [[5, 6, 7], [8], [9, 10, 11, 12, 13]]
RESPONSES = [[20, 21], [22, 23, 24, 25], [26]]
PAD = 1


def test_layout_left_pads_prompts_and_right_pads_responses():
    b = make_sequence_batch(PROMPTS, RESPONSES, PAD)
    assert b.prompt_len == 5 and b.input_ids.shape == (3, 9)
    assert b.input_ids[1].tolist() == [1, 1, 1, 1, 8, 22, 23, 24, 25]
    assert b.attention_mask[2].tolist() == [1, 1, 1, 1, 1, 1, 0, 0, 0]
    assert b.position_ids[1, 4:].tolist() == [0, 1, 2, 3, 4]
    assert b.response_mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert b.response_ids[0, :2].tolist() == [20, 21]


def test_empty_prompt_is_rejected():
    with pytest.raises(ValueError, match="empty prompt"):
        make_sequence_batch([[]], [[1]], PAD)


def test_padded_logprobs_equal_one_row_forwards(tiny_policy):
    model = AutoModelForCausalLM.from_pretrained(tiny_policy).eval()
    batch = make_sequence_batch(PROMPTS, RESPONSES, PAD)
    with torch.no_grad():
        got = response_logprobs(model, batch, chunk_size=3)  # (B, R)
        for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES, strict=True)):
            ids = torch.tensor([p + r])
            logits = model(ids).logits[0, len(p) - 1 : len(p) - 1 + len(r)]
            want = torch.log_softmax(logits, -1).gather(-1, torch.tensor(r)[:, None])[:, 0]
            torch.testing.assert_close(got[i, : len(r)], want, atol=1e-5, rtol=0)


def test_padded_values_and_scores_equal_one_row_forwards(tiny_reward):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_reward).eval()
    batch = make_sequence_batch(PROMPTS, RESPONSES, PAD)
    with torch.no_grad():
        values = token_values(model, batch)  # (B, R)
        scores = sequence_scores(model, batch)  # (B,)
        for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES, strict=True)):
            hidden = model.model(torch.tensor([p + r])).last_hidden_state[0]
            per_token = model.score(hidden).squeeze(-1)
            want_values = per_token[len(p) - 1 : len(p) - 1 + len(r)]
            torch.testing.assert_close(values[i, : len(r)], want_values, atol=1e-5, rtol=0)
            torch.testing.assert_close(scores[i], per_token[-1], atol=1e-5, rtol=0)


def test_a_trimmed_selection_drops_only_the_columns_every_row_pads():
    b = make_sequence_batch(PROMPTS, RESPONSES, PAD)  # P = 5, R = 4
    rows = torch.tensor([0, 2])  # prompts of 3 and 5 tokens, responses of 2 and 1
    t = b.select(torch.tensor([0])).trimmed()  # prompt 3 of 5 columns, response 2 of 4
    assert (t.prompt_len, t.input_ids.tolist()) == (3, [[5, 6, 7, 20, 21]])
    assert t.position_ids.tolist() == [[0, 1, 2, 3, 4]] and t.response_mask.tolist() == [[1, 1]]
    both = b.select(rows).trimmed()  # no common left padding (prompt 5); responses 2 wide
    assert both.prompt_len == 5 and both.response_mask.shape == (2, 2)
    assert b.trimmed() is b  # nothing to trim: every column is real in some row
    assert b.sizes() == [(3, 2), (1, 4), (5, 1)]
    assert to_width(torch.ones(2, 2), 4).tolist() == [[1, 1, 0, 0], [1, 1, 0, 0]]


def test_trimmed_forwards_equal_full_width_ones(tiny_policy, tiny_reward):
    policy = AutoModelForCausalLM.from_pretrained(tiny_policy).eval()
    critic = AutoModelForSequenceClassification.from_pretrained(tiny_reward).eval()
    full = make_sequence_batch(PROMPTS, RESPONSES, PAD).select(torch.tensor([0, 2]))
    trim = full.trimmed()
    assert trim.input_ids.shape[1] < full.input_ids.shape[1]
    with torch.no_grad():
        width = full.response_mask.shape[1]
        got = to_width(response_logprobs(policy, trim, chunk_size=3), width)
        want = response_logprobs(policy, full, chunk_size=3)
        torch.testing.assert_close(got * full.response_mask, want * full.response_mask)
        got = to_width(token_values(critic, trim), width)
        want = token_values(critic, full)
        torch.testing.assert_close(got * full.response_mask, want * full.response_mask)
        torch.testing.assert_close(sequence_scores(critic, trim), sequence_scores(critic, full))


def test_experience_shards_are_contiguous_copies_of_every_field():
    batch = make_sequence_batch([[5], [6, 7], [8], [9, 10]], [[1, 2], [3], [4, 4], [5]], pad_id=0)
    old = torch.arange(8.0).view(4, 2)
    exp = Experience(batch, old, rewards=-old, tis_weights=torch.ones(4, 2))
    first, second = exp.shards(2)
    assert torch.equal(second.batch.input_ids, batch.input_ids[2:])
    assert second.batch.prompt_len == batch.prompt_len
    assert torch.equal(second.old_logprobs, old[2:]) and torch.equal(first.rewards, -old[:2])
    assert second.advantages is None and second.gae_in_learner
    # Copies, not views: a view would pickle the whole batch to every rank.
    assert second.old_logprobs.untyped_storage().nbytes() == 4 * 4
    with pytest.raises(ValueError, match="4 rows do not split evenly over 3 ranks"):
        exp.shards(3)


def _family(name: str):
    """A tiny random model config of a decoder family, built here (nothing downloaded)."""
    import transformers as tf

    small = {
        "vocab_size": 64,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "num_labels": 1,
    }
    return {
        "gpt2": lambda: tf.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=32, **small),
        "llama": lambda: tf.LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            tie_word_embeddings=True,
            **small,
        ),
        "mistral": lambda: tf.MistralConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            **small,
        ),
        "gpt_neox": lambda: tf.GPTNeoXConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            **small,
        ),
        "opt": lambda: tf.OPTConfig(
            hidden_size=32,
            ffn_dim=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            word_embed_proj_dim=32,
            max_position_embeddings=32,
            **small,
        ),
        "phi3": lambda: tf.Phi3Config(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            **small,
        ),
    }[name]()


FAMILIES = ["gpt2", "llama", "mistral", "gpt_neox", "opt", "phi3"]
SMALL_PROMPTS = [[5, 6, 7], [8], [9, 10, 11, 12, 13]]
SMALL_RESPONSES = [[20, 21], [22, 23, 24, 25], [26]]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_decoder_family_is_reached_through_transformers_accessors(family):
    # The trunk and the heads by the names transformers gives them (GPT-2's `.transformer`,
    # GPT-NeoX's `.gpt_neox`, ...), padded rows equal to one-row forwards.
    torch.manual_seed(0)
    config = _family(family)
    causal = AutoModelForCausalLM.from_config(config).eval()
    scalar = AutoModelForSequenceClassification.from_config(config).eval()
    batch = make_sequence_batch(SMALL_PROMPTS, SMALL_RESPONSES, pad_id=0)
    with torch.no_grad():
        got = response_logprobs(causal, batch, chunk_size=7)
        values, scores = token_values(scalar, batch), sequence_scores(scalar, batch)
        for i, (p, r) in enumerate(zip(SMALL_PROMPTS, SMALL_RESPONSES, strict=True)):
            ids = torch.tensor([p + r])
            logits = causal(ids).logits[0, len(p) - 1 : len(p) - 1 + len(r)]
            want = torch.log_softmax(logits, -1).gather(-1, torch.tensor(r)[:, None])[:, 0]
            torch.testing.assert_close(got[i, : len(r)], want, atol=1e-5, rtol=0)
            per_token = scalar.score(scalar.base_model(ids).last_hidden_state[0]).squeeze(-1)
            want_values = per_token[len(p) - 1 : len(p) - 1 + len(r)]
            torch.testing.assert_close(values[i, : len(r)], want_values, atol=1e-5, rtol=0)
            torch.testing.assert_close(scores[i], per_token[-1], atol=1e-5, rtol=0)


def test_the_padding_share_counts_what_each_trimmed_micro_batch_computes():
    from instructray.actors.learner.actor import padding_share
    from instructray.actors.learner.step import MicroBatch

    b = make_sequence_batch(PROMPTS, RESPONSES, PAD)  # real tokens: 5, 5, 6
    one = torch.tensor(1.0)
    parts = [MicroBatch(b.select(torch.tensor([0, 2])), torch.tensor([0, 2]), one, False)]
    parts.append(MicroBatch(b.select(torch.tensor([1])), torch.tensor([1]), one, True))
    # rows 0 and 2: 2 x (5 prompt + 2 response columns) = 14 computed, 11 real; row 1: 5 and 5
    assert padding_share(parts) == pytest.approx(1 - 16 / 19)
