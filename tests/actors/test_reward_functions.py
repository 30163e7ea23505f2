"""Reward functions from files, given their prompts' columns, async ones under a call policy, and
a remote endpoint (a server this test starts on loopback)."""

from __future__ import annotations

import time

import pytest
from reward_server import reward_server

from instructray.actors.scoring.reward_functions import (
    RewardCallFailed,
    RewardFunction,
    columns_as_lists,
    remote_reward,
)
from instructray.actors.scoring.scorers import RewardActor
from instructray.actors.sequences import make_sequence_batch
from instructray.orchestrator.config.functions import load_function, read_files

REWARD_FILE = """
import asyncio

def by_answer(prompts, responses, answer):
    return [float(r == a) for r, a in zip(responses, answer)]

def everything(prompts, responses, **columns):
    return [float(len(columns)) for _ in responses]

def two_args(prompts):
    return [0.0]

CALLS = []

async def slow_on_b(prompts, responses, **columns):
    CALLS.append(list(responses))
    if "b" in responses:
        await asyncio.sleep(60)
    return [1.0 for _ in responses]
"""


@pytest.fixture()
def reward_file(tmp_path):
    path = tmp_path / "elsewhere" / "my_reward.py"
    path.parent.mkdir()
    path.write_text(REWARD_FILE)
    return path


def test_a_file_reward_loads_from_its_path_or_its_shipped_text(reward_file, tmp_path):
    fn = load_function(f"{reward_file}:by_answer", "reward.function")
    assert fn(["p", "q"], ["4", "5"], answer=["4", "6"]) == [1.0, 0.0]
    files = read_files([f"{reward_file}:by_answer", "os:getcwd"])
    assert files == {str(reward_file): REWARD_FILE}
    moved = tmp_path / "moved.py"
    reward_file.rename(moved)  # as on a node where the file is not: its text came with the run
    shipped = load_function(f"{reward_file}:everything", "reward.function", files)
    assert shipped(["p"], ["r"], a=[1], b=[2]) == [2.0]


@pytest.mark.parametrize(
    ("source", "function", "message"),
    [
        (None, "f", "the file {path} does not exist"),
        ("def f(prompts, responses):\n    return [\n", "f", "{path}, line 2: SyntaxError"),
        ("import os\n\nx = 1 / 0\n", "f", "{path}, line 3: ZeroDivisionError when imported"),
        ("def g(a, b):\n    pass\n", "f", "the file {path} has no function 'f' (it defines g)"),
        ("f = 3\n", "f", "'f' in the file {path} is not a function but int"),
    ],
)
def test_a_bad_reward_file_is_one_line_naming_file_and_line(tmp_path, source, function, message):
    path = tmp_path / f"r{abs(hash(source)) % 10**6}.py"
    if source is not None:
        path.write_text(source)
    with pytest.raises(ValueError) as e:
        load_function(f"{path}:{function}", "reward.function")
    assert message.format(path=path) in str(e.value)
    assert "\n" not in str(e.value)


def test_columns_reach_a_function_by_name_or_all(reward_file):
    rows = [{"answer": "4", "id": 1}, {"answer": "5", "id": 2}, {"id": 3}]
    columns = columns_as_lists(rows, 3)
    assert columns == {"answer": ["4", "5", None], "id": [1, 2, 3]}
    by_answer = RewardFunction("f", load_function(f"{reward_file}:by_answer", "k"))
    assert by_answer(["p"] * 3, ["4", "4", "4"], columns) == [1.0, 0.0, 0.0]
    everything = RewardFunction("f", load_function(f"{reward_file}:everything", "k"))
    assert everything(["p"] * 3, ["x"] * 3, columns) == [2.0] * 3
    with pytest.raises(ValueError, match=r"needs the column 'answer', .* \(they give: id\)"):
        by_answer(["p"], ["4"], {"id": [1]})
    with pytest.raises(ValueError, match="takes 1 positional argument"):
        RewardFunction("f", load_function(f"{reward_file}:two_args", "k"))


def test_async_calls_run_concurrently_within_the_limit():
    in_flight, most = 0, 0

    async def judge(prompts, responses):
        nonlocal in_flight, most
        import asyncio

        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return [float(len(r)) for r in responses]

    reward = RewardFunction("judge", judge, max_concurrency=3, call_batch_size=2)
    responses = ["a" * i for i in range(9)]
    assert reward(["p"] * 9, responses, {}) == [float(i) for i in range(9)]  # order kept
    assert most == 3  # 5 calls of up to 2 responses, 3 at a time


def test_a_slow_async_call_times_out_is_retried_then_fails_in_one_line(reward_file):
    module_fn = load_function(f"{reward_file}:slow_on_b", "reward.function")
    reward = RewardFunction(
        "my_reward.py:slow_on_b", module_fn, timeout_s=0.2, retries=2, max_concurrency=4
    )
    began = time.monotonic()
    with pytest.raises(RewardCallFailed) as e:
        reward(["p"] * 3, ["a", "b", "c"], {})
    assert time.monotonic() - began < 30  # three tries of 0.2 s, not the function's 60 s
    message = str(e.value)
    assert "\n" not in message
    assert "'my_reward.py:slow_on_b' failed 3 times" in message
    assert "TimeoutError: no answer within 0.2 s (reward.timeout_s)" in message
    calls = module_fn.__globals__["CALLS"]
    assert calls.count(["b"]) == 3 and calls.count(["a"]) == 1  # only the slow call was retried


@pytest.fixture(scope="module")
def endpoint():
    with reward_server("s3cret") as server:
        yield server


def test_a_remote_reward_posts_columns_with_a_token(endpoint):
    endpoint.seen.clear()
    url = endpoint.url
    reward = RewardFunction(url, remote_reward(url, "s3cret"), call_batch_size=2)
    got = reward(["p", "p", "p"], ["cat", "a cat cat", "dog"], {"answer": [1, 2, 3]})
    assert got == [1.0, 2.0, 0.0]
    bodies = sorted((b for _, b in endpoint.seen), key=lambda b: b["responses"])
    assert bodies == [
        {"prompts": ["p", "p"], "responses": ["cat", "a cat cat"], "answer": [1, 2]},
        {"prompts": ["p"], "responses": ["dog"], "answer": [3]},
    ]
    assert {auth for auth, _ in endpoint.seen} == {"Bearer s3cret"}


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("fail", "answered HTTP 500: internal error: the judge is down"),
        ("slow", "TimeoutError: no answer within 0.3 s"),
        ("count", "returned 2 scores for 1 samples"),
        ("no token", "answered HTTP 401: a bearer token is needed"),
    ],
)
def test_remote_reward_errors_are_one_line(endpoint, mode, message):
    url, token = endpoint.url, "" if mode == "no token" else "s3cret"
    reward = RewardFunction(
        url, remote_reward(url, token), key="reward.url", timeout_s=0.3, retries=1
    )
    with pytest.raises(RewardCallFailed) as e:
        reward([mode], ["x"], {})
    assert message in str(e.value) and "reward.url" in str(e.value)
    assert "\n" not in str(e.value)


def test_the_reward_actor_passes_each_samples_columns(reward_file):
    spec = f"{reward_file}:by_answer, {reward_file}:everything"
    actor = RewardActor(function=spec, files=read_files([spec.split(", ")[0]]))
    batch = make_sequence_batch([[5], [6]], [[7], [8]], pad_id=1)
    columns = [{"answer": "4", "raw_prompts": "2+2?"}, {"answer": "9", "raw_prompts": "3*3?"}]
    score, parts = actor.score_sources(batch, ["p", "q"], ["4", "4"], columns)
    assert parts.tolist() == [[1.0, 2.0], [0.0, 2.0]]
    assert score.tolist() == [3.0, 2.0]
