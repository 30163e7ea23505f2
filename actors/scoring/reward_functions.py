"""Reward functions as a run calls them: given the columns of each sample's prompt row and, when
they are `async def` or a remote endpoint (`reward.url`), called concurrently with a timeout and
retries.

The contract: `fn(prompts, responses, **columns) -> list[float]`, one finite score per response.
`prompts` are the formatted prompts (after the chat template); every other column of a prompt's
row arrives as a keyword argument holding one value per response, in the responses' order, with
`raw_prompts` (the row's own prompt, as the data set wrote it). A function takes the columns it
names, or all of them with `**columns`.

Functions are found by orchestrator/config/functions.py (a file's text travels with the actors).
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable, Iterable
from typing import Any

from instructray.actors.scoring.rule_rewards import check_scores
from instructray.orchestrator.config.functions import ARGUMENTS


def columns_as_lists(rows: list[dict[str, Any]] | None, n: int) -> dict[str, list[Any]]:
    """Each sample's prompt columns ({name: value} per sample) as {name: [value per sample]}; a
    name a row lacks is None there."""
    if not rows:
        return {}
    if len(rows) != n:
        raise ValueError(f"{len(rows)} column rows for {n} samples")
    names = list(dict.fromkeys(name for row in rows for name in row))
    return {name: [row.get(name) for row in rows] for name in names}


class RewardFunction:
    """One reward function, called the way its signature asks: the columns it names (all with
    **kwargs). An `async def` function is called on chunks of `call_batch_size` samples (0: all
    at once), up to `max_concurrency` calls at a time, each given `timeout_s` and tried
    1 + `retries` times; past that the call raises RewardCallFailed naming the function and the
    last error."""

    def __init__(
        self,
        spec: str,
        fn: Callable[..., Any],
        *,
        key: str = "reward.function",
        max_concurrency: int = 8,
        timeout_s: float = 60.0,
        retries: int = 2,
        call_batch_size: int = 1,
    ):
        self.spec, self.fn, self.key = spec, fn, key
        self.max_concurrency, self.timeout_s, self.retries = max_concurrency, timeout_s, retries
        self.call_batch_size = call_batch_size
        routine = fn if inspect.isroutine(fn) else type(fn).__call__  # a callable object
        self.is_async = inspect.iscoroutinefunction(routine)
        try:
            params = list(inspect.signature(fn).parameters.values())
        except (ValueError, TypeError):  # a builtin without a signature: prompts and responses
            params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_ONLY) for n in ARGUMENTS]
        self.takes_all = any(p.kind is p.VAR_KEYWORD for p in params)
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if len(positional) < 2 and not any(p.kind is p.VAR_POSITIONAL for p in params):
            raise ValueError(
                f"{key} = {spec!r} takes {len(positional)} positional argument(s); a reward "
                f"function is fn(prompts, responses, **columns) -> list of floats"
            )
        first_two = {p.name for p in positional[:2]}
        by_name = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        named = [p for p in params if p.kind in by_name and p.name not in first_two]
        self.named = [p.name for p in named]  # the columns it takes by name
        self.required = [p.name for p in named if p.default is p.empty]

    def check_columns(self, available: Iterable[str]) -> None:
        """ValueError naming the first column the function needs that the prompt rows lack."""
        have = sorted(set(available))
        for name in self.required:
            if name not in have:
                raise ValueError(
                    f"{self.key} = {self.spec!r} needs the column '{name}', which the prompt rows "
                    f"lack (they give: {', '.join(have) or 'none'})"
                )

    def arguments(self, columns: dict[str, list[Any]]) -> dict[str, list[Any]]:
        """The keyword arguments the function takes, of the samples' columns."""
        self.check_columns(columns)
        if self.takes_all:
            return dict(columns)
        return {name: values for name, values in columns.items() if name in self.named}

    def __call__(
        self, prompts: list[str], responses: list[str], columns: dict[str, list[Any]]
    ) -> list[float]:
        """One checked score per response."""
        kwargs = self.arguments(columns)
        n = len(responses)
        if not self.is_async:
            try:
                raw = self.fn(prompts, responses, **kwargs)
            except Exception as e:
                raise ValueError(f"{self.label} raised {type(e).__name__}: {e}") from e
            return check_scores(raw, n, prompts, self.label)
        step = self.call_batch_size or n
        chunks = [range(i, min(i + step, n)) for i in range(0, n, step)]
        scores = asyncio.run(self._gather(prompts, responses, kwargs, chunks))
        return [s for part in scores for s in part]

    @property
    def label(self) -> str:
        return f"{self.key} {self.spec!r}"

    async def _gather(
        self,
        prompts: list[str],
        responses: list[str],
        kwargs: dict[str, list[Any]],
        chunks: list[range],
    ) -> list[list[float]]:
        limit = asyncio.Semaphore(self.max_concurrency)

        async def one(part: range) -> list[float]:
            async with limit:
                return await self._call_with_retries(
                    [prompts[i] for i in part],
                    [responses[i] for i in part],
                    {name: [values[i] for i in part] for name, values in kwargs.items()},
                )

        tasks = [asyncio.ensure_future(one(part)) for part in chunks]
        try:
            return await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()

    async def _call_with_retries(
        self, prompts: list[str], responses: list[str], kwargs: dict[str, list[Any]]
    ) -> list[float]:
        last = ""
        for attempt in range(1 + self.retries):
            try:
                raw = await asyncio.wait_for(
                    self.fn(prompts, responses, **kwargs), timeout=self.timeout_s
                )
                return check_scores(raw, len(responses), prompts, self.label)
            except (TimeoutError, asyncio.TimeoutError):
                last = f"TimeoutError: no answer within {self.timeout_s:g} s (reward.timeout_s)"
            except Exception as e:
                last = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
            if attempt < self.retries:
                await asyncio.sleep(min(2.0**attempt * 0.1, 5.0))
        raise RewardCallFailed(
            f"{self.label} failed {1 + self.retries} times (1 + reward.retries) on a call of "
            f"{len(responses)} sample(s); the last error: {last}"
        )


class RewardCallFailed(RuntimeError):
    """An async reward or reward.url call failed every try; one line naming it and why."""


def remote_reward(url: str, token: str = "") -> Callable[..., Any]:
    """reward.url as an async reward function: POST {"prompts", "responses", <columns>} as JSON
    (a bearer token when given), expect a JSON list of scores or {"scores": [...]}."""

    async def post(prompts: list[str], responses: list[str], **columns: list[Any]) -> list[float]:
        import aiohttp

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        body = json.dumps({"prompts": prompts, "responses": responses, **columns}, default=_plain)
        headers["Content-Type"] = "application/json"
        async with aiohttp.ClientSession() as session:
            async with session.post(url, data=body, headers=headers) as answer:
                text = await answer.text()
                if answer.status != 200:
                    raise RuntimeError(
                        f"{url} answered HTTP {answer.status}: {' '.join(text.split())[:200]}"
                    )
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise RuntimeError(f"{url} answered with no JSON: {text[:120]!r}") from None
        scores = data.get("scores", data.get("rewards")) if isinstance(data, dict) else data
        if scores is None:
            raise RuntimeError(f"{url} answered {text[:120]!r}: expected a list or {{'scores'}}")
        return scores

    return post


def _plain(value: Any) -> Any:
    """JSON for what a data set's columns may hold beyond JSON's types (numpy values)."""
    for method in ("tolist", "item", "isoformat"):
        if hasattr(value, method):
            return getattr(value, method)()
    return str(value)
