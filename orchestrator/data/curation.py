"""Prompt-set curation as InstructGPT describes it, and splits that keep each user on one side.

`curate` drops, in this order: rows over a per-user cap, prompts that share a long common prefix
with an earlier kept prompt, and prompts that contain personal data (e-mail addresses, phone
numbers, card numbers). `split_by_user` makes a train/held-out split where all rows of one user
land on the same side, so held-out prompts come from users the model never trained on.

Rows are dicts of any schema (prompts, demonstrations, rankings), or anything else: the caller
says how to read a row's text with `text_of`, and a row without text (one that breaks its schema,
mostly) is kept for the schema check to report, never compared or dropped here.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

FILTERS = ("per_user_cap", "common_prefix", "pii")

_EMAIL = re.compile(r"(?<![\w.+-])[\w.%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
# US style: 415-555-0123, 415.555.0123, 415 555 0123, (415) 555-0123, optionally 1- in front.
_PHONE_US = re.compile(r"(?<![\w+])(?:1[-. ])?(?:\(\d{3}\) ?|\d{3}[-. ])\d{3}[-. ]\d{4}(?![\w-])")
# International: a + country code, then 2-5 groups; checked to hold 8-15 digits (E.164).
_PHONE_INTL = re.compile(r"(?<![\w+])\+\d{1,3}(?:[-. ]?\(?\d{1,4}\)?){2,5}(?![\w-])")
# Runs of digits separated by single spaces or dashes; windows of 13-19 digits are card-like.
_DIGIT_RUN = re.compile(r"\d+(?:[ -]\d+)*")

# Presidio entity types treated as personal data. Not DATE_TIME, PERSON, LOCATION, NRP or URL:
# prompts name public figures, places and dates all the time.
PRESIDIO_ENTITIES = (
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "IP_ADDRESS",
    "CRYPTO",
    "US_SSN",
    "US_ITIN",
    "US_PASSPORT",
    "US_BANK_NUMBER",
    "US_DRIVER_LICENSE",
    "UK_NHS",
    "MEDICAL_LICENSE",
)
PRESIDIO_MIN_SCORE = 0.5


@dataclass
class CurationReport:
    """What `curate` dropped: rows per filter, kept and total row counts."""

    counts: dict[str, int]
    kept: int
    total: int
    pii_kinds: dict[str, int] = field(default_factory=dict)  # dropped rows per kind found

    def summary(self) -> str:
        """One line, e.g. 'kept 7 of 10 rows; dropped per_user_cap 1, common_prefix 1, pii 1'."""
        dropped = ", ".join(f"{name} {self.counts.get(name, 0)}" for name in FILTERS)
        return f"kept {self.kept} of {self.total} rows; dropped {dropped}"


def _luhn_ok(digits: str) -> bool:
    total = 0
    for k, ch in enumerate(reversed(digits)):
        d = int(ch)
        if k % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _has_card(text: str) -> bool:
    """A run of 13-19 digits, unbroken or in groups split by single spaces or dashes, passing Luhn.

    In a split run only groups of 3+ digits count (cards print as 4-4-4-4, 4-6-5, ...), so dates
    such as 2023-01-15 and lists of short numbers never add up to a card number.
    """
    for match in _DIGIT_RUN.finditer(text):
        groups = re.split(r"[ -]", match.group())
        if len(groups) == 1:
            digits = groups[0]
            if 13 <= len(digits) <= 19 and _luhn_ok(digits):
                return True
            continue
        for start in range(len(groups)):
            digits = ""
            for group in groups[start:]:
                if len(group) < 3 or len(digits) + len(group) > 19:
                    break
                digits += group
                if len(digits) >= 13 and _luhn_ok(digits):
                    return True
    return False


def _has_phone(text: str) -> bool:
    if _PHONE_US.search(text):
        return True
    for match in _PHONE_INTL.finditer(text):
        if 8 <= sum(ch.isdigit() for ch in match.group()) <= 15:
            return True
    return False


@functools.lru_cache(maxsize=1)
def _analyzer() -> Any | None:
    """Presidio's AnalyzerEngine when `presidio_analyzer` and its spaCy model load, else None."""
    try:
        from presidio_analyzer import AnalyzerEngine
    except ImportError:
        return None
    try:
        return AnalyzerEngine(supported_languages=["en"])
    except Exception as e:  # a missing spaCy model, mostly; the regex checks still run
        logger.warning("presidio_analyzer is installed but did not start (%s); regex PII only", e)
        return None


def find_pii(text: str) -> list[str]:
    """Kinds of personal data in `text`: "email", "phone", "card", then Presidio entity types.

    The regex checks always run. When the maintained detector `presidio_analyzer` is importable
    (an optional dependency, loaded on first use; absent is fine), its English AnalyzerEngine also
    runs, and every entity of PRESIDIO_ENTITIES it finds with score >= 0.5 counts.
    """
    kinds = []
    if _EMAIL.search(text):
        kinds.append("email")
    if _has_phone(text):
        kinds.append("phone")
    if _has_card(text):
        kinds.append("card")
    engine = _analyzer()
    if engine is not None:
        for result in engine.analyze(text=text, language="en", entities=list(PRESIDIO_ENTITIES)):
            if result.score >= PRESIDIO_MIN_SCORE and result.entity_type not in kinds:
                kinds.append(result.entity_type)
    return kinds


def _user_of(row: Any, user_field: str) -> str | None:
    user = row.get(user_field) if isinstance(row, Mapping) else None
    return None if user is None or str(user) == "" else str(user)


def _prefix_key(text: str, prefix_chars: int) -> str:
    return " ".join(text.split()).lower()[:prefix_chars]


def curate(
    rows: Iterable[dict[str, Any]],
    text_of: Callable[[dict[str, Any]], str],
    *,
    max_per_user: int | None = 200,
    prefix_chars: int | None = 64,
    drop_pii: bool = True,
    user_field: str = "user_id",
) -> tuple[list[dict[str, Any]], CurationReport]:
    """Kept rows in their original order and a report of what each filter dropped.

    Filters, in order: (a) at most `max_per_user` rows per user (rows without a user are never
    capped; None disables); (b) drop a prompt whose first `prefix_chars` characters, after
    collapsing whitespace and lowercasing, equal those of an earlier kept prompt (shorter texts
    compare whole; None disables); (c) drop prompts where `find_pii` finds anything. A row whose
    text is empty passes (b) and (c).
    """
    if max_per_user is not None and max_per_user < 1:
        raise ValueError(f"max_per_user must be >= 1 or None, got {max_per_user}")
    if prefix_chars is not None and prefix_chars < 1:
        raise ValueError(f"prefix_chars must be >= 1 or None, got {prefix_chars}")
    rows = list(rows)
    counts = dict.fromkeys(FILTERS, 0)
    pii_kinds: dict[str, int] = {}
    per_user: dict[str, int] = {}
    prefixes: set[str] = set()
    kept: list[dict[str, Any]] = []
    for row in rows:
        user = _user_of(row, user_field)
        if max_per_user is not None and user is not None:
            if per_user.get(user, 0) >= max_per_user:
                counts["per_user_cap"] += 1
                continue
            per_user[user] = per_user.get(user, 0) + 1
        text = text_of(row)
        if not isinstance(text, str) or not text.strip():
            kept.append(row)  # nothing to compare: the schema check reports the row, or skips it
            continue
        if prefix_chars is not None:
            key = _prefix_key(text, prefix_chars)
            if key in prefixes:
                counts["common_prefix"] += 1
                continue
            prefixes.add(key)
        if drop_pii:
            found = find_pii(text)
            if found:
                counts["pii"] += 1
                for kind in found:
                    pii_kinds[kind] = pii_kinds.get(kind, 0) + 1
                continue
        kept.append(row)
    return kept, CurationReport(counts, len(kept), len(rows), pii_kinds)


def _unit_hash(seed: int, key: str) -> float:
    """A stable number in [0, 1) for (seed, key), the same on every machine and Python run."""
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_by_user(
    rows: Iterable[dict[str, Any]],
    eval_fraction: float,
    seed: int,
    user_field: str = "user_id",
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, held_out) with all rows of one user on the same side, in their original order.

    A user goes to held-out when a sha256 hash of (seed, user id) falls below `eval_fraction`; a
    row without a user id is its own group, hashed by (seed, its index). With eval_fraction > 0
    and at least 2 groups, both sides are non-empty: if the hash leaves one empty, the group with
    the smallest hash moves to held-out (or the one with the largest hash moves to train).
    """
    if not 0.0 <= eval_fraction <= 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1], got {eval_fraction}")
    rows = list(rows)
    group_of: list[str] = []
    hashes: dict[str, float] = {}
    for i, row in enumerate(rows):
        user = _user_of(row, user_field)
        group = f"user:{user}" if user is not None else f"row:{i}"
        group_of.append(group)
        if group not in hashes:
            hashes[group] = _unit_hash(seed, group)
    held = {g for g, h in hashes.items() if h < eval_fraction}
    if eval_fraction > 0 and len(hashes) >= 2:
        if not held:
            held = {min(hashes, key=lambda g: (hashes[g], g))}
        elif len(held) == len(hashes):
            held.discard(max(hashes, key=lambda g: (hashes[g], g)))
    train = [row for row, g in zip(rows, group_of, strict=True) if g not in held]
    held_out = [row for row, g in zip(rows, group_of, strict=True) if g in held]
    return train, held_out
