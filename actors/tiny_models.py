"""Tiny models built on the fly (`tiny://policy`, `tiny://reward`, ...): no hub, no download.

Each folder is a real Hugging Face checkpoint (`save_pretrained`, safetensors) with its tokenizer,
loadable by transformers and vLLM. Qwen2-style with head_dim 64, which vLLM's CPU attention needs.
Builds are seeded and cached by a hash of their recipe, so every process resolves the same weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

SCHEME = "tiny://"
BUILDER_VERSION = 1
SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}<|endoftext|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@dataclass(frozen=True)
class TinyRecipe:
    """The shape of one tiny model; its hash names the cache folder."""

    kind: str  # "causal_lm" or "reward"
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2  # head_dim = hidden_size / num_heads = 64
    num_kv_heads: int = 1
    intermediate_size: int = 256
    vocab_size: int = 512
    max_positions: int = 512
    seed: int = 0
    corpus: str = "default"  # what the tokenizer is trained on: a key of CORPORA


RECIPES = {
    "policy": TinyRecipe("causal_lm"),
    "reward": TinyRecipe("reward", seed=1),
    # ~30M parameters (hidden 512, 8 layers): the benchmark's larger size.
    "policy-30m": TinyRecipe("causal_lm", 512, 8, 8, 2, 2048, 4096),
    "reward-30m": TinyRecipe("reward", 512, 8, 8, 2, 2048, 4096, seed=1),
    # The demo world's base model (~2M parameters): its tokenizer knows the world's words whole.
    "world": TinyRecipe("causal_lm", 256, 4, 4, 2, 512, 512, corpus="world"),
    # Not tiny: ~1.2B parameters, 4.9 GB in fp32, for `instructray doctor`'s weight sync of
    # more than 4 GiB (GPU nodes only; a few GB of memory and ~1 min to build).
    "sync-4gib": TinyRecipe("causal_lm", 2048, 20, 16, 4, 8192, 512),
}


def default_cache_dir() -> Path:
    return Path(os.environ.get("INSTRUCTRAY_TINY_DIR", Path.home() / ".cache/instructray/tiny"))


def is_tiny(spec: str) -> bool:
    return spec.startswith(SCHEME)


def _corpus(seed: int, n: int = 3000) -> list[str]:
    """Seeded plain-English sentences so the byte-level BPE learns common words."""
    rng = random.Random(seed)
    subjects = [
        "the cat",
        "a dog",
        "my friend",
        "the teacher",
        "our team",
        "the model",
        "you",
        "we",
    ]
    verbs = ["likes", "writes", "reads", "explains", "answers", "helps", "finds", "tells"]
    objects = ["a story", "the question", "short poems", "the facts", "a list", "the answer"]
    extras = ["Please", "Tell me about", "Write a", "Explain", "Thank you.", "Q:", "A:", "1.", "2."]
    lines = []
    for _ in range(n):
        words = [rng.choice(subjects), rng.choice(verbs), rng.choice(objects)]
        if rng.random() < 0.4:
            words.insert(0, rng.choice(extras))
        lines.append(" ".join(words) + rng.choice([".", "!", "?", " 42.", ", and then"]))
    return lines


def _world_corpus(seed: int) -> list[str]:
    from instructray.orchestrator.demo.world import corpus

    return corpus(seed)


CORPORA = {"default": _corpus, "world": _world_corpus}


def build_tokenizer(out_dir: Path, vocab_size: int, seed: int = 0, corpus: str = "default"):
    """Train a byte-level BPE tokenizer with chat special tokens and save it to out_dir."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPORA[corpus](seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        bos_token=None,
        chat_template=CHAT_TEMPLATE,
    )
    fast.save_pretrained(out_dir)
    return fast


def build_model(recipe: TinyRecipe, out_dir: Path) -> Path:
    """Build the tokenizer and a randomly initialized (seeded) model into out_dir."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2ForSequenceClassification

    from instructray.actors.logs import name_accelerator

    name_accelerator()  # save_pretrained imports DeepSpeed (through accelerate)
    tokenizer = build_tokenizer(out_dir, recipe.vocab_size, corpus=recipe.corpus)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_kv_heads,
        head_dim=recipe.hidden_size // recipe.num_heads,
        max_position_embeddings=recipe.max_positions,
        tie_word_embeddings=recipe.kind == "causal_lm",
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        num_labels=1,
        dtype="float32",
    )
    torch.manual_seed(recipe.seed)
    cls = Qwen2ForCausalLM if recipe.kind == "causal_lm" else Qwen2ForSequenceClassification
    model = cls(config)
    if recipe.kind == "causal_lm":
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    (out_dir / "tiny_recipe.json").write_text(json.dumps(asdict(recipe), indent=1))
    return out_dir


def resolve(spec: str, cache_dir: str | Path | None = None) -> str:
    """`tiny://NAME` -> a built folder (built once, atomically); other specs pass through."""
    if not is_tiny(spec):
        return spec
    name = spec[len(SCHEME) :]
    if name not in RECIPES:
        raise ValueError(
            f"unknown tiny model '{spec}', expected one of tiny://{', tiny://'.join(RECIPES)}"
        )
    recipe = RECIPES[name]
    # The key covers the tokenizer's training text too, so a changed corpus builds anew.
    text = "\n".join(CORPORA[recipe.corpus](0))
    key = json.dumps([BUILDER_VERSION, asdict(recipe), hashlib.sha256(text.encode()).hexdigest()])
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    target = root / f"{name}-{digest}"
    if (target / "config.json").is_file():
        return str(target)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        build_model(recipe, tmp)
        os.rename(tmp, target)  # atomic; another process may have won the race
    except OSError:
        if not (target / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)
