"""Math-answer rewards for `reward.function: instructray.actors.scoring.math_reward:accuracy` (or
`:accuracy_with_format`): 1 when a response's final answer equals the data set's reference.

Answers are compared by Hugging Face's math-verify, which reads LaTeX and plain expressions into
SymPy (so `\\boxed{\\frac{1}{2}}`, `0.5` and `1/2` agree). The reference is the prompt row's
column `answer`, `ground_truth` or `solution`, the first one given; GSM8K's `"... #### 1,234"`
counts as 1234. A response may answer with `\\boxed{...}`, a `#### 42` line, `The answer is 42`
or a number or expression at its end.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from math_verify.errors import TimeoutException

REFERENCE_COLUMNS = ("answer", "ground_truth", "solution")
# Seconds math-verify may spend on one response. Whole seconds: on the main thread math-verify
# enforces them itself with signal.alarm, per parse and per comparison; on any other thread
# (signals work only on the main one) the whole score runs on a helper thread that is given up
# after them: the score is then 0.0, while the helper finishes in the background.
TIMEOUT_S = 5
FORMAT_BONUS = 0.1
EXTRACTION = (LatexExtractionConfig(), ExprExtractionConfig())

_HASHES = re.compile(r"####([^\n]*)")  # a GSM8K answer line; its number is the rest of the line
_THOUSANDS = re.compile(r"(?<=\d)[, ](?=\d{3}(?!\d))")  # 1,234 and 1 234 -> 1234
_DELIMITED = re.compile(r"\$|\\\(|\\\[|\\boxed")  # math mode or a box: math-verify finds it
_NUMBER_AND_WORDS = re.compile(r"([-+]?\d[\d,]*(?:\.\d+)?%?)(?:\s+[A-Za-z]+)+\.?")


def extract_reference(text: str) -> str:
    """A data set's reference answer: the part after the last `####` (GSM8K), without the commas
    (or spaces) between thousands (`"... #### 1,234"` -> `"1234"`); else the text as it is."""
    text = str(text)
    if "####" not in text:
        return text
    return _THOUSANDS.sub("", text.rsplit("####", 1)[1]).strip()


def _bare_answer(text: str) -> str:
    """A short answer written without `$`: LaTeX math unless it is a number followed by words
    (`18 dollars` -> `18`), put in `$...$` so that math-verify reads all of it (`2x+3`, not 2)."""
    text = text.strip().strip("*").strip()
    if _DELIMITED.search(text):
        return text
    number = _NUMBER_AND_WORDS.fullmatch(text)
    return f"${number.group(1) if number else text}$"


def _stated_answer(response: str) -> str:
    """The part of a response that math-verify reads: the rest of its last `####` line when
    that holds anything, else the whole response."""
    lines = [m.group(1) for m in _HASHES.finditer(response)]
    if lines and lines[-1].strip():
        return _bare_answer(_THOUSANDS.sub("", lines[-1]))
    return response


def _score(response: str, reference: str, timeout: int | None) -> float:
    """1.0 when math-verify finds the response's answer equal to the reference, with
    math-verify's own signal timeout (None: none); any error in math-verify is a 0.0."""
    try:
        # An escaped dollar (`\\$18`) loses its sign: outside math mode math-verify finds no
        # number behind one.
        reference, response = reference.replace("\\$", ""), response.replace("\\$", "")
        gold = parse(
            _bare_answer(extract_reference(reference)), EXTRACTION, parsing_timeout=timeout
        )
        if not gold:
            return 0.0
        answer = parse(_stated_answer(response), EXTRACTION, parsing_timeout=timeout)
        return 1.0 if verify(gold, answer, timeout_seconds=timeout) else 0.0
    except (Exception, TimeoutException):
        return 0.0


def answer_score(response: str, reference: str) -> float:
    """1.0 if math-verify says the response's final answer equals the reference (a bare
    reference is read as LaTeX math, GSM8K's `#### N` as N), else 0.0; also 0.0 when parsing
    or comparing takes more than TIMEOUT_S seconds or fails. Safe on any thread."""
    if threading.current_thread() is threading.main_thread():
        return _score(response, reference, TIMEOUT_S)
    result: list[float] = []
    helper = threading.Thread(
        target=lambda: result.append(_score(response, reference, None)),
        name="math_reward",
        daemon=True,  # one stuck in SymPy does not hold up the process's exit
    )
    helper.start()
    helper.join(TIMEOUT_S)
    return result[0] if result else 0.0


def _references(
    n: int, answer: Any, ground_truth: Any, solution: Any, columns: dict[str, Any]
) -> list[str]:
    """Each response's reference: its row's `answer`, else `ground_truth`, else `solution` (a
    row lacking a column holds None there). ValueError when none of them arrived, or a row has
    none of them."""
    given = [
        (name, values)
        for name, values in zip(REFERENCE_COLUMNS, (answer, ground_truth, solution), strict=True)
        if values is not None
    ]
    if not given:
        have = ", ".join(sorted(columns)) or "none"
        raise ValueError(
            f"the math reward needs a reference answer in a column named "
            f"{', '.join(REFERENCE_COLUMNS)}; the prompt rows give: {have}"
        )
    for name, values in given:
        if isinstance(values, (str, bytes)) or len(values) != n:
            raise ValueError(
                f"column {name!r} holds {values!r:.60}, expected a list of {n} values, one per "
                f"response"
            )
    references = []
    for i in range(n):
        found = [values[i] for _, values in given if values[i] is not None]
        if not found:
            raise ValueError(f"sample {i} has no reference: None in {', '.join(dict(given))}")
        references.append(str(found[0]))
    return references


def accuracy(
    prompts: list[str],
    responses: list[str],
    answer: list[Any] | None = None,
    ground_truth: list[Any] | None = None,
    solution: list[Any] | None = None,
    **columns: list[Any],
) -> list[float]:
    """1.0 per response whose final answer equals its row's reference (column `answer`, else
    `ground_truth`, else `solution`), else 0.0."""
    references = _references(len(responses), answer, ground_truth, solution, columns)
    return [answer_score(r, ref) for r, ref in zip(responses, references, strict=True)]


def states_answer(response: str) -> bool:
    """Whether the response gives its final answer in a form the reward checks: `\\boxed{...}`
    or a `#### ...` line."""
    return "\\boxed{" in response or any(m.group(1).strip() for m in _HASHES.finditer(response))


def accuracy_with_format(
    prompts: list[str],
    responses: list[str],
    answer: list[Any] | None = None,
    ground_truth: list[Any] | None = None,
    solution: list[Any] | None = None,
    **columns: list[Any],
) -> list[float]:
    """accuracy plus 0.1 (FORMAT_BONUS) for a response that states its final answer as
    `\\boxed{...}` or a `#### ...` line, right or wrong: it nudges a policy towards an answer
    the reward can check. Scores 0, 0.1, 1 or 1.1."""
    scores = accuracy(prompts, responses, answer, ground_truth, solution, **columns)
    return [s + FORMAT_BONUS * states_answer(r) for s, r in zip(scores, responses, strict=True)]
