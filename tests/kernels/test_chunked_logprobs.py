import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from instructray.kernels import entropy_from_logits, logprobs_from_hidden, logprobs_from_logits

REPO_ROOT = Path(__file__).resolve().parents[2]
B, T, H, V = 3, 11, 16, 97  # B * T = 33 rows
CHUNK_SIZES = [1, 5, 8, 33, 1000]  # 5 and 8 do not divide 33


def inputs(seed=0):
    # Multiples of 1/4 and 1/8 make every product and sum in hidden @ weight.T exact in fp32, so
    # chunked and full matmuls give identical logits whatever their summation order: the
    # comparisons below see only the log-softmax math.
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randint(-8, 9, (B, T, H), generator=gen) / 4.0
    weight = torch.randint(-4, 5, (V, H), generator=gen) / 8.0
    targets = torch.randint(V, (B, T), generator=gen)
    return hidden, weight, targets


def assert_fp32_close(actual, expected):
    # log_softmax and logsumexp round differently: a few ulp, i.e. 1e-6 at |logprob| ~ 1-10.
    assert_close(actual, expected, atol=1e-6, rtol=1e-6)


def naive(logits, targets, temperature):
    log_softmax = torch.log_softmax(logits.float() / temperature, dim=-1)  # (B, T, V)
    logprobs = log_softmax.gather(-1, targets[..., None]).squeeze(-1)
    return logprobs, entropy_from_logits(logits.float() / temperature)


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
def test_logprobs_from_logits_match_naive(chunk_size):
    hidden, weight, targets = inputs()
    logits = hidden @ weight.T
    expected, expected_entropy = naive(logits, targets, temperature=0.7)
    logprobs, entropy = logprobs_from_logits(logits, targets, chunk_size, 0.7, with_entropy=True)
    assert_fp32_close(logprobs, expected)
    assert_fp32_close(entropy, expected_entropy)
    alone = logprobs_from_logits(logits, targets, chunk_size, 0.7)
    assert_fp32_close(alone, expected)


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
def test_logprobs_from_hidden_match_naive(chunk_size):
    hidden, weight, targets = inputs()
    expected, expected_entropy = naive(hidden @ weight.T, targets, temperature=1.3)
    logprobs, entropy = logprobs_from_hidden(
        hidden, weight, targets, chunk_size, 1.3, with_entropy=True
    )
    assert_fp32_close(logprobs, expected)
    assert_fp32_close(entropy, expected_entropy)


def test_temperature_scales_logits():
    hidden, weight, targets = inputs(seed=1)
    logits = hidden @ weight.T
    hot = logprobs_from_logits(logits, targets, 4, temperature=2.0)
    assert_fp32_close(hot, logprobs_from_logits(logits / 2.0, targets, 4))
    assert not torch.allclose(hot, logprobs_from_logits(logits, targets, 4), atol=1e-3)


def test_bf16_logits_are_upcast_per_chunk():
    hidden, weight, targets = inputs(seed=2)
    logits = (hidden @ weight.T).to(torch.bfloat16)
    logprobs = logprobs_from_logits(logits, targets, chunk_size=7)
    assert logprobs.dtype == torch.float32
    assert_fp32_close(logprobs, naive(logits, targets, 1.0)[0])


@pytest.mark.parametrize("chunk_size", [4, 33])
def test_gradients_through_logits_match_naive(chunk_size):
    hidden, weight, targets = inputs(seed=3)
    logits = (hidden @ weight.T).requires_grad_()
    cotangent = torch.randn(B, T, generator=torch.Generator().manual_seed(9))
    logprobs, entropy = logprobs_from_logits(logits, targets, chunk_size, 0.8, with_entropy=True)
    (grad,) = torch.autograd.grad((logprobs * cotangent + 0.1 * entropy).sum(), logits)
    ref_logprobs, ref_entropy = naive(logits, targets, 0.8)
    (ref_grad,) = torch.autograd.grad((ref_logprobs * cotangent + 0.1 * ref_entropy).sum(), logits)
    assert_fp32_close(grad, ref_grad)


@pytest.mark.parametrize("chunk_size", [5, 33])
def test_gradients_through_hidden_match_naive(chunk_size):
    hidden, weight, targets = inputs(seed=4)
    hidden.requires_grad_()
    weight.requires_grad_()
    cotangent = torch.randn(B, T, generator=torch.Generator().manual_seed(8))
    logprobs, entropy = logprobs_from_hidden(
        hidden, weight, targets, chunk_size, 1.5, with_entropy=True
    )
    grads = torch.autograd.grad((logprobs * cotangent - entropy).sum(), (hidden, weight))
    ref_logprobs, ref_entropy = naive(hidden @ weight.T, targets, 1.5)
    ref_grads = torch.autograd.grad(
        (ref_logprobs * cotangent - ref_entropy).sum(), (hidden, weight)
    )
    # the weight gradient sums over rows chunk by chunk, in another order than one matmul does
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        assert_close(grad, ref_grad, atol=1e-6, rtol=1e-5)


def test_bad_arguments_raise():
    hidden, weight, targets = inputs()
    with pytest.raises(ValueError, match="chunk_size must be > 0, got 0"):
        logprobs_from_hidden(hidden, weight, targets, chunk_size=0)
    with pytest.raises(ValueError, match="temperature must be > 0, got 0.0"):
        logprobs_from_logits(hidden @ weight.T, targets, temperature=0.0)
    with pytest.raises(ValueError, match=r"targets \(3, 10\)"):
        logprobs_from_logits(hidden @ weight.T, targets[:, 1:])


def test_empty_batch_gives_empty_outputs():
    logprobs, entropy = logprobs_from_logits(
        torch.zeros(2, 0, V), torch.zeros(2, 0, dtype=torch.long), with_entropy=True
    )
    assert logprobs.shape == entropy.shape == (2, 0)


# Runs in a fresh process: torch's CPU allocations are invisible to tracemalloc, so the resident
# set is read from the kernel instead. Before each run the peak (VmHWM) is reset to the current
# size (writing 5 to /proc/self/clear_refs), so each run's peak is its own, whatever ran before.
MEMORY_SCRIPT = """
import json, torch
from instructray.kernels import logprobs_from_hidden, logprobs_from_logits
torch.manual_seed(0)
H, V, CHUNK = 64, 24000, 128
batch = {"train": 1, "logits": 3, "hidden": 4}  # T = 512
# size of the fp32 (B, T, V) logits; for "hidden": 4 * 512 * 24000 * 4 bytes = 196 MB
full_mb = {case: b * 512 * V * 4 / 2**20 for case, b in batch.items()}
hidden = torch.randn(4, 512, H)
weight = torch.randn(V, H) / 8
targets = torch.randint(V, (4, 512))
logits = torch.randn(3, 512, V, dtype=torch.bfloat16)  # as a model returns them
train_hidden = hidden[:1].clone().requires_grad_()
train_weight = weight.clone().requires_grad_()

def naive_logprobs(source, targets):
    return torch.log_softmax(source.float(), -1).gather(-1, targets[..., None]).squeeze(-1)

def run(case, chunked):
    if case == "train":  # forward and backward, as in a PPO step
        if chunked:
            out = logprobs_from_hidden(train_hidden, train_weight, targets[:1], CHUNK)
        else:
            out = naive_logprobs(train_hidden @ train_weight.T, targets[:1])
        out.sum().backward()
        return
    with torch.no_grad():  # reference / old log-probs
        if case == "logits":
            chunked_fn = lambda: logprobs_from_logits(logits, targets[:3], CHUNK)
            naive_fn = lambda: naive_logprobs(logits, targets[:3])
        else:
            chunked_fn = lambda: logprobs_from_hidden(hidden, weight, targets, CHUNK)
            naive_fn = lambda: naive_logprobs(hidden @ weight.T, targets)
        chunked_fn() if chunked else naive_fn()

def status_mb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024

def peak_of(case, chunked):
    # peak resident set above the starting one during one run, in MB
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident set
    start = status_mb("VmRSS")
    run(case, chunked)
    return status_mb("VmHWM") - start

warm_up = logprobs_from_hidden(train_hidden[:, :4], train_weight, targets[:1, :4], 2)
warm_up.sum().backward()  # loads the checkpoint machinery outside the measurement
train_hidden.grad = train_weight.grad = None
chunked_mb = {case: peak_of(case, chunked=True) for case in batch}
naive_mb = {case: peak_of(case, chunked=False) for case in batch}
print(json.dumps({"full": full_mb, "chunked": chunked_mb, "naive": naive_mb}))
"""


@pytest.fixture(scope="module")
def peak_memory():
    # A fixed mmap threshold makes glibc mmap every large buffer and unmap it on free, so the
    # resident set follows live tensors rather than heap fragmentation (which varies run to run).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(result.stdout)


def test_naive_peaks_hold_the_full_logits(peak_memory):
    # The naive runs really materialized the fp32 (B, T, V) logits: the measurement can see them.
    for case, full_mb in peak_memory["full"].items():
        assert peak_memory["naive"][case] > full_mb, (case, peak_memory)


@pytest.mark.parametrize("case", ["train", "logits", "hidden"])
def test_chunked_logprobs_use_less_than_half_the_peak_memory(peak_memory, case):
    assert peak_memory["chunked"][case] < peak_memory["naive"][case] / 2, peak_memory
