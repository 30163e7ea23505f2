"""Rollout engine: real vLLM (CPU build) inside a real Ray actor, checked against transformers.

Two engine starts in all (15-35 s each on 2 busy cores): one shared by the sampling tests, and
one whose weights the update test changes.
"""

from __future__ import annotations

import pytest
import safetensors.torch
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from instructray.actors.faults import ENV as FAULT_ENV
from instructray.actors.rollout.actor import RolloutActor
from instructray.actors.weight_sync import buckets
from instructray.orchestrator.config import load_config
from instructray.orchestrator.ppo.sync_check import (
    logprob_diff_stats,
    logprob_problem,
    sync_logprob_limits,
)

START_TIMEOUT = 300  # engine start: a Ray worker, importing vLLM, loading the model
CALL_TIMEOUT = 120
MAX_MODEL_LEN = 64
TOL = 1e-4  # fp32 engine vs fp32 transformers, max over tokens
PROMPTS = [[10, 11, 12, 13], [40, 7], [100, 101, 102, 103, 104, 105, 106], [40, 7]]


def sampling(**overrides) -> dict:
    params = dict(
        n=3,
        max_tokens=8,
        temperature=1.0,
        top_p=1.0,
        top_k=-1,
        stop=[],
        stop_token_ids=[],
        ignore_eos=False,
        seed=1,
    )
    return params | overrides


def start_engine(ray, model_path: str, **options):
    actor = ray.remote(RolloutActor).options(num_cpus=1)
    engine = actor.remote(
        model_path, max_model_len=MAX_MODEL_LEN, seed=0, kv_cache_gib=0.25, **options
    )
    assert ray.get(engine.ready.remote(), timeout=START_TIMEOUT)
    return engine


@pytest.fixture(scope="module")
def engine(ray_local, tiny_policy):
    engine = start_engine(ray_local, tiny_policy)
    yield engine
    ray_local.kill(engine)


def hf_logprobs(model, sequences: list[list[int]]) -> list[torch.Tensor]:
    """log p(token t | tokens < t) for t = 1..L-1 of each sequence, from a plain fp32 forward."""
    out = []
    with torch.no_grad():
        for ids in sequences:
            x = torch.tensor([ids])  # (1, L)
            logp = torch.log_softmax(model(input_ids=x).logits[0, :-1].float(), -1)  # (L-1, V)
            out.append(logp.gather(-1, x[0, 1:, None])[:, 0])
    return out


def max_diff(engine_lp: list[list[float]], hf_lp: list[torch.Tensor]) -> float:
    assert [len(a) for a in engine_lp] == [len(b) for b in hf_lp]
    return max(
        (torch.tensor(a, dtype=torch.float32) - b).abs().max().item()
        for a, b in zip(engine_lp, hf_lp, strict=True)
    )


def test_generate_returns_n_samples_per_prompt_in_prompt_order(ray_local, tiny_policy, engine):
    eos = AutoConfig.from_pretrained(tiny_policy).eos_token_id
    out = ray_local.get(engine.generate.remote(PROMPTS, sampling()), timeout=CALL_TIMEOUT)
    assert out["prompt_index"] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert len(out["response_ids"]) == len(out["logprobs"]) == len(out["finish_reasons"]) == 12
    for ids, lps, reason in zip(
        out["response_ids"], out["logprobs"], out["finish_reasons"], strict=True
    ):
        assert 1 <= len(ids) <= 8 and len(lps) == len(ids)
        assert all(lp <= 0.0 for lp in lps)
        # A response that stops keeps its EOS token (the reward model scores at it).
        assert reason == ("stop" if ids[-1] == eos else "length")
        assert reason == "stop" or len(ids) == 8
    # Per-sample seeds: one prompt's samples differ, and so do two copies of the same prompt.
    samples = [tuple(ids) for ids in out["response_ids"]]
    assert len(set(samples[0:3])) == 3
    assert samples[3:6] != samples[9:12]


def test_same_seed_same_samples_and_ignore_eos_fills_max_tokens(ray_local, engine):
    fixed = sampling(ignore_eos=True, max_tokens=12, seed=7)
    a, b, c = ray_local.get(
        [
            engine.generate.remote(PROMPTS, fixed),
            engine.generate.remote(PROMPTS, fixed),
            engine.generate.remote(PROMPTS, fixed | {"seed": 8}),
        ],
        timeout=CALL_TIMEOUT,
    )
    assert a["response_ids"] == b["response_ids"] and a["logprobs"] == b["logprobs"]
    assert a["response_ids"] != c["response_ids"]
    assert all(len(ids) == 12 for ids in a["response_ids"])
    assert set(a["finish_reasons"]) == {"length"}


def test_stop_token_ids_end_a_response_with_stop(ray_local, tiny_policy, engine):
    vocab = AutoConfig.from_pretrained(tiny_policy).vocab_size
    every_token = list(range(vocab))  # whatever is sampled first is a stop token
    out = ray_local.get(
        engine.generate.remote(PROMPTS, sampling(stop_token_ids=every_token)), timeout=CALL_TIMEOUT
    )
    assert set(out["finish_reasons"]) == {"stop"}
    assert all(len(ids) == 1 for ids in out["response_ids"])


def test_engine_logprobs_equal_a_transformers_forward(ray_local, tiny_policy, engine):
    # Sampling at temperature 0.7 with top-k must not change the reported log-probs: they are the
    # raw model's (logprobs_mode="raw_logprobs"), which is what the learner computes.
    params = sampling(temperature=0.7, top_k=20, ignore_eos=True, seed=3)
    out = ray_local.get(engine.generate.remote(PROMPTS, params), timeout=CALL_TIMEOUT)
    sequences = [
        PROMPTS[i] + ids for i, ids in zip(out["prompt_index"], out["response_ids"], strict=True)
    ]
    scored = ray_local.get(engine.prompt_logprobs.remote(sequences), timeout=CALL_TIMEOUT)

    model = AutoModelForCausalLM.from_pretrained(tiny_policy, dtype=torch.float32).eval()
    reference = hf_logprobs(model, sequences)
    response_ref = [
        lp[len(PROMPTS[i]) - 1 :] for i, lp in zip(out["prompt_index"], reference, strict=True)
    ]
    assert max_diff(out["logprobs"], response_ref) < TOL
    assert max_diff(scored, reference) < TOL


def test_too_long_prompt_is_a_value_error_naming_it(ray_local, engine):
    too_long = [[5, 6], list(range(10, 10 + MAX_MODEL_LEN))]
    with pytest.raises(ValueError, match=f"prompt 1 has {MAX_MODEL_LEN} tokens; max_model_len is"):
        ray_local.get(engine.generate.remote(too_long, sampling()), timeout=CALL_TIMEOUT)
    with pytest.raises(ValueError, match="sequence 1 has"):
        ray_local.get(engine.prompt_logprobs.remote(too_long), timeout=CALL_TIMEOUT)


def perturbed_policy(model_path: str, seed: int = 0, std: float = 0.05):
    """The policy with seeded noise on every parameter, and its state dict as safetensors bytes."""
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # tied embeddings are one parameter, perturbed once
            p.add_(torch.randn(p.shape, generator=gen) * std)
    state = model.state_dict()
    if model.config.tie_word_embeddings:
        del state["lm_head.weight"]  # shares memory with embed_tokens; safetensors refuses both
    return model, safetensors.torch.save(state)


def test_update_weights_loads_the_new_policy(ray_local, tiny_policy):
    # Prefix caching on, in blocks of 32 tokens: a long prompt's first block is cached by the
    # first generate call, and must not serve its stale KV after the update.
    engine = start_engine(ray_local, tiny_policy, prefix_caching=True, block_size=32)
    long_prompt = [[(7 * i) % 400 + 10 for i in range(40)]]
    fixed = sampling(n=2, ignore_eos=True, max_tokens=6, seed=11)
    try:
        original = AutoModelForCausalLM.from_pretrained(tiny_policy, dtype=torch.float32).eval()
        perturbed, data = perturbed_policy(tiny_policy)
        sequences = [p + [50, 60, 70, 80] for p in PROMPTS]
        assert ray_local.get(engine.version.remote(), timeout=CALL_TIMEOUT) == 0
        before = ray_local.get(engine.weights_checksum.remote(), timeout=CALL_TIMEOUT)
        ray_local.get(engine.generate.remote(long_prompt, fixed), timeout=CALL_TIMEOUT)  # cached

        # In buckets far smaller than the model (as the object-store sync sends it): several
        # cross, each its own object, and the engine loads them all as one update.
        state = safetensors.torch.load(data)
        parts = [
            ray_local.put(safetensors.torch.save(dict(bucket)))
            for bucket in buckets(state.items(), bucket_bytes=64 * 1024)
        ]
        assert len(parts) >= 4
        assert ray_local.get(engine.update_weights.remote(1, parts), timeout=CALL_TIMEOUT) == 1
        assert ray_local.get(engine.version.remote(), timeout=CALL_TIMEOUT) == 1
        after = ray_local.get(engine.weights_checksum.remote(), timeout=CALL_TIMEOUT)
        assert after != pytest.approx(before)
        scored = ray_local.get(engine.prompt_logprobs.remote(sequences), timeout=CALL_TIMEOUT)
        assert max_diff(scored, hf_logprobs(perturbed, sequences)) < TOL
        assert max_diff(scored, hf_logprobs(original, sequences)) > 100 * TOL
        # The sampled tokens' log-probs after the update are the new policy's: the cache of the
        # long prompt's first block was reset with the update (prompt_logprobs bypass it).
        out = ray_local.get(engine.generate.remote(long_prompt, fixed), timeout=CALL_TIMEOUT)
        drawn = [long_prompt[0] + ids for ids in out["response_ids"]]
        new = [lp[len(long_prompt[0]) - 1 :] for lp in hf_logprobs(perturbed, drawn)]
        assert max_diff(out["logprobs"], new) < TOL

        for stale in (1, 0):
            with pytest.raises(ValueError, match=f"weight version {stale} is not newer than"):
                ray_local.get(engine.update_weights.remote(stale, parts), timeout=CALL_TIMEOUT)
        assert ray_local.get(engine.version.remote(), timeout=CALL_TIMEOUT) == 1

        # Loading the original weights back is a full replacement, not a partial or additive one.
        state = {k: v for k, v in original.state_dict().items() if k != "lm_head.weight"}
        back = ray_local.put(safetensors.torch.save(state))
        assert ray_local.get(engine.update_weights.remote(2, back), timeout=CALL_TIMEOUT) == 2
        scored = ray_local.get(engine.prompt_logprobs.remote(sequences), timeout=CALL_TIMEOUT)
        assert max_diff(scored, hf_logprobs(original, sequences)) < TOL
        restored = ray_local.get(engine.weights_checksum.remote(), timeout=CALL_TIMEOUT)
        assert restored == pytest.approx(before, rel=1e-12)
    finally:
        ray_local.kill(engine)


def test_in_bf16_the_sync_check_passes_a_real_update_and_catches_a_stale_lm_head(
    ray_local, tiny_policy, tmp_path
):
    # The fp32 update test's case in bf16: the engine loads a noisy policy, then another one
    # with its tied LM head's packed copy left at the weights before (the fault hook drops the
    # CPU build's repack step). The loader took in every tensor, so fingerprints agree; the
    # check's log-prob statistics against a transformers forward in bf16 must tell them apart.
    markers = tmp_path / "markers"
    markers.mkdir()
    actor = ray_local.remote(RolloutActor).options(
        num_cpus=1, runtime_env={"env_vars": {FAULT_ENV: f"stale:rollout:repack:2@{markers}"}}
    )
    engine = actor.remote(
        tiny_policy, dtype="bfloat16", max_model_len=MAX_MODEL_LEN, seed=0, kv_cache_gib=0.25
    )
    limits = sync_logprob_limits(load_config(None, ["--model.dtype=bfloat16"]))
    try:
        fixed = sampling(n=1, ignore_eos=True, max_tokens=40, seed=5)
        verdicts = []
        for version, seed in ((1, 0), (2, 1)):
            model, data = perturbed_policy(tiny_policy, seed=seed)
            ray_local.get(engine.update_weights.remote(version, data), timeout=CALL_TIMEOUT)
            out = ray_local.get(engine.generate.remote(PROMPTS, fixed), timeout=CALL_TIMEOUT)
            sequences = [p + r for p, r in zip(PROMPTS, out["response_ids"], strict=True)]
            scored = ray_local.get(engine.prompt_logprobs.remote(sequences), timeout=CALL_TIMEOUT)
            learner = [lp.tolist() for lp in hf_logprobs(model.to(torch.bfloat16), sequences)]
            stats = logprob_diff_stats(scored, learner)
            verdicts.append((stats, logprob_problem(stats, limits, "bfloat16")))
        (good, good_problem), (stale, stale_problem) = verdicts
        assert good_problem == "" and good["mean"] < limits[0] / 5, good
        if _onednn_packs_bf16():
            assert stale_problem.startswith("differs from the learner by"), stale
            assert " in mean |log-prob|" in stale_problem and stale["mean"] > 2 * limits[0]
        else:  # no packed copy on this CPU (AVX2 only): nothing is left stale, the update passes
            assert stale_problem == "" and stale["mean"] < limits[0] / 5, stale
    finally:
        ray_local.kill(engine)


def _onednn_packs_bf16() -> bool:
    """Whether vLLM's CPU build keeps a packed oneDNN copy of a bf16 weight on this CPU: it
    makes one as below and falls back to torch's linear (no copy) where oneDNN has no bf16
    matmul, as on CPUs with AVX2 but no AVX-512."""
    from vllm import _custom_ops as ops

    try:
        ops.create_onednn_mm(torch.zeros(64, 32, dtype=torch.bfloat16).t(), 32)
    except RuntimeError:
        return False
    return bool(ops._supports_onednn)
