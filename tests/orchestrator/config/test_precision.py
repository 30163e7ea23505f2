"""model.dtype auto: bf16 where the hardware computes it natively, read from the CPU's flags;
model.attn_implementation auto, which follows it."""

from __future__ import annotations

import logging

from instructray.orchestrator.config import load_config, precision
from instructray.orchestrator.config.precision import (
    choose_dtype,
    cpu_bf16_flags,
    resolve_precision,
)

# /proc/cpuinfo as two kinds of the project's machines show it (flags shortened)
AVX512_BF16 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_bf16 avx512_vnni
processor\t: 1
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_bf16 avx512_vnni
"""
AVX2_ONLY = """processor\t: 0
model name\t: Intel Xeon
flags\t\t: fpu sse2 avx avx2 fma
"""
AMX = "processor\t: 0\nflags\t\t: avx2 avx512f amx_bf16 amx_tile amx_int8\n"


def test_cpu_flags_are_read_from_cpuinfo():
    assert cpu_bf16_flags(AVX512_BF16) == ["avx512_bf16"]
    assert cpu_bf16_flags(AMX) == ["amx_bf16"]
    assert cpu_bf16_flags(AVX2_ONLY) == []
    assert cpu_bf16_flags("") == []


def test_auto_picks_bf16_only_where_the_cpu_has_it():
    dtype, why = choose_dtype(False, None, AVX512_BF16)
    assert dtype == "bfloat16" and "avx512_bf16" in why
    assert choose_dtype(False, None, AMX)[0] == "bfloat16"
    dtype, why = choose_dtype(False, None, AVX2_ONLY)
    assert dtype == "float32" and "emulated" in why


def test_auto_on_gpus():
    assert choose_dtype(True, True, AVX2_ONLY) == ("bfloat16", "the GPU supports bf16")
    assert choose_dtype(True, False, AVX512_BF16)[0] == "float32"
    assert choose_dtype(True, None, AVX2_ONLY)[0] == "bfloat16"  # the driver sees no GPU


def test_resolve_sets_the_dtype_and_logs_why(tmp_path, monkeypatch, caplog):
    for text, want, attention in (
        (AVX512_BF16, "bfloat16", "eager"),
        (AVX2_ONLY, "float32", "sdpa"),
    ):
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text(text)
        monkeypatch.setattr(precision, "CPUINFO", cpuinfo)
        cfg = load_config(None, ["--model.dtype=auto"])
        with caplog.at_level(logging.INFO, logger="instructray.orchestrator.config.precision"):
            resolve_precision(cfg)
        assert (cfg.model.dtype, cfg.model.attn_implementation) == (want, attention)
        assert f"precision: {want} (model.dtype auto:" in caplog.text
        assert f"attention: {attention} (model.attn_implementation auto:" in caplog.text
        caplog.clear()
    # A dtype given by name is kept as it is.
    cfg = load_config(None, ["--model.dtype=float32"])
    assert resolve_precision(cfg).model.dtype == "float32"


def test_auto_attention_is_eager_only_for_bf16_on_a_cpu():
    def auto(dtype: str, on_gpu: bool) -> str:
        return load_config(None, [f"--model.dtype={dtype}"]).model.attention(on_gpu)[0]

    assert auto("bfloat16", on_gpu=False) == "eager"
    assert auto("float32", on_gpu=False) == "sdpa"
    assert auto("bfloat16", on_gpu=True) == "sdpa"
    cfg = load_config(None, ["--model.dtype=bfloat16", "--model.attn_implementation=sdpa"])
    assert resolve_precision(cfg).model.attn_implementation == "sdpa"  # named: kept
