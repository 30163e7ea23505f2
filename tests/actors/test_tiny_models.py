"""The tiny-model builder: real HF folders, loadable, deterministic, cached."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from instructray.actors.tiny_models import RECIPES, resolve


def test_policy_folder_loads_and_generates(tiny_policy):
    tok = AutoTokenizer.from_pretrained(tiny_policy)
    model = AutoModelForCausalLM.from_pretrained(tiny_policy)
    assert (Path(tiny_policy) / "model.safetensors").is_file()
    cfg = model.config
    assert cfg.hidden_size // cfg.num_attention_heads == 64  # vLLM CPU attention needs 64
    assert tok.pad_token_id != tok.eos_token_id
    ids = tok("Tell me about the cat.", return_tensors="pt").input_ids
    assert tok.decode(ids[0]) == "Tell me about the cat."  # byte-level: lossless round trip
    out = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids.shape[1]


def test_chat_template_renders_roles(tiny_policy):
    tok = AutoTokenizer.from_pretrained(tiny_policy)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|user|>hi<|assistant|>"


def test_reward_model_scores_one_number_per_sequence(tiny_reward):
    tok = AutoTokenizer.from_pretrained(tiny_reward)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_reward)
    batch = tok(
        ["a dog reads", "the teacher explains the facts"], return_tensors="pt", padding=True
    )
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, 1)
    assert torch.isfinite(logits).all()


def test_build_is_deterministic_and_cached(tiny_dir, tiny_policy, tmp_path):
    again = resolve("tiny://policy", tiny_dir)
    assert again == tiny_policy  # cached: same folder
    fresh = resolve("tiny://policy", tmp_path)  # rebuilt elsewhere from the same recipe
    a = AutoModelForCausalLM.from_pretrained(tiny_policy).state_dict()
    b = AutoModelForCausalLM.from_pretrained(fresh).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((Path(fresh) / "tokenizer.json").read_text()) == json.loads(
        (Path(tiny_policy) / "tokenizer.json").read_text()
    )


def test_policy_and_reward_share_the_tokenizer(tiny_policy, tiny_reward):
    a = AutoTokenizer.from_pretrained(tiny_policy)
    b = AutoTokenizer.from_pretrained(tiny_reward)
    assert a.get_vocab() == b.get_vocab()


def test_plain_paths_pass_through_and_unknown_names_fail(tmp_path):
    assert resolve("/some/folder", tmp_path) == "/some/folder"
    with pytest.raises(ValueError, match="unknown tiny model 'tiny://nope'"):
        resolve("tiny://nope", tmp_path)
    assert set(RECIPES) >= {"policy", "reward"}


def test_world_model_tokenizer_keeps_the_worlds_words_whole(tiny_dir):
    from instructray.orchestrator.demo.world import ENTITIES, RUDE_WORDS

    tok = AutoTokenizer.from_pretrained(resolve("tiny://world", tiny_dir))
    for word in (*ENTITIES, *RUDE_WORDS, "lives", "about"):
        assert len(tok.tokenize(" " + word)) == 1, word
