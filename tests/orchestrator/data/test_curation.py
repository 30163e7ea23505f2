"""Prompt curation (per-user cap, common prefixes, personal data) and splits by user."""

from __future__ import annotations

import pytest

from instructray.orchestrator.data import curation
from instructray.orchestrator.data.curation import CurationReport, curate, find_pii, split_by_user


@pytest.fixture(autouse=True)
def regex_pii_only(monkeypatch):
    """Same results whether or not the optional Presidio detector is installed."""
    monkeypatch.setattr(curation, "_analyzer", lambda: None)


def prompt(row: dict) -> str:
    return row["prompt"]


ROWS = [
    {"id": 0, "user_id": "u1", "prompt": "Write a short poem about the sea at night."},
    {"id": 1, "user_id": "u1", "prompt": "Summarize the plot of Hamlet in three sentences."},
    {"id": 2, "user_id": "u1", "prompt": "Email my boss at boss@example.com."},  # cap, not pii
    {"id": 3, "user_id": "u2", "prompt": "  WRITE a short   poem about the moon."},  # prefix
    {"id": 4, "user_id": None, "prompt": "Hi there"},
    {"id": 5, "user_id": "", "prompt": "hi  THERE"},  # exact duplicate after normalizing
    {"id": 6, "user_id": "u3", "prompt": "Hi there, how are you today?"},  # longer: kept
    {"id": 7, "user_id": "u3", "prompt": "Send the invoice to jane.doe@example.org please."},
    {"id": 8, "user_id": "u4", "prompt": "Call me back at (415) 555-0123 tomorrow."},
    {"id": 9, "user_id": "u4", "prompt": "My London number is +44 20 7946 0958."},
    {"id": 10, "user_id": "u5", "prompt": "Charge it to card 4111 1111 1111 1111."},
    {"id": 11, "user_id": "u5", "prompt": "What happened in 1969, and what is 42 times 7?"},
    {"id": 12, "user_id": "u6", "prompt": "Plan a trip from 2023-01-15 to 2023-01-22."},
    {"id": 13, "user_id": "u6", "prompt": "Is 1234 5678 1234 5678 a valid card number?"},
    {"id": 14, "user_id": "u7", "prompt": "Order number 1234567812345678 has not arrived."},
]


def test_curate_drops_exactly_what_each_filter_should():
    kept, report = curate(ROWS, prompt, max_per_user=2, prefix_chars=20)
    assert [r["id"] for r in kept] == [0, 1, 4, 6, 11, 12, 13, 14]
    assert report.counts == {"per_user_cap": 1, "common_prefix": 2, "pii": 4}
    assert (report.kept, report.total) == (8, 15)
    assert report.pii_kinds == {"email": 1, "phone": 2, "card": 1}
    assert report.summary() == ("kept 8 of 15 rows; dropped per_user_cap 1, common_prefix 2, pii 4")


def test_curate_with_every_filter_off_keeps_everything():
    kept, report = curate(ROWS, prompt, max_per_user=None, prefix_chars=None, drop_pii=False)
    assert kept == ROWS
    assert report.counts == {"per_user_cap": 0, "common_prefix": 0, "pii": 0}
    assert report.summary() == (
        "kept 15 of 15 rows; dropped per_user_cap 0, common_prefix 0, pii 0"
    )


def test_rows_without_a_user_are_never_capped():
    rows = [{"prompt": f"Question number {k} about cats?", "user_id": None} for k in range(3)]
    rows += [{"prompt": f"Question number {k} about dogs?"} for k in range(3)]
    rows += [{"prompt": f"Question number {k} about birds?", "user_id": "u"} for k in range(3)]
    kept, report = curate(rows, prompt, max_per_user=1, prefix_chars=None)
    assert len(kept) == 7 and report.counts["per_user_cap"] == 2


def test_curate_default_prefix_is_64_characters_and_uses_text_of():
    head = "Please explain, step by step and with a worked example, how a car"  # 65 characters
    rows = [
        {"messages": [{"role": "user", "content": head + " engine works."}]},
        {"messages": [{"role": "user", "content": head + " battery charges."}]},
        {"messages": [{"role": "user", "content": head[:40] + " bicycle gear works."}]},
    ]
    kept, report = curate(rows, lambda r: r["messages"][-1]["content"])
    assert kept == [rows[0], rows[2]] and report.counts["common_prefix"] == 1


def test_curate_rejects_bad_settings():
    with pytest.raises(ValueError, match="max_per_user"):
        curate(ROWS, prompt, max_per_user=0)
    with pytest.raises(ValueError, match="prefix_chars"):
        curate(ROWS, prompt, prefix_chars=0)


def test_report_summary_is_one_line():
    report = CurationReport({"per_user_cap": 1, "common_prefix": 1, "pii": 1}, kept=7, total=10)
    assert report.summary() == "kept 7 of 10 rows; dropped per_user_cap 1, common_prefix 1, pii 1"


@pytest.mark.parametrize(
    ("text", "kinds"),
    [
        ("write to a.b-c+tag@mail.example.co.uk", ["email"]),
        ("call +1 415 555 0123", ["phone"]),
        ("call (415) 555-0123", ["phone"]),
        ("call 415-555-0123.", ["phone"]),
        ("ring +44 20 7946 0958", ["phone"]),
        ("card 4111-1111-1111-1111", ["card"]),
        ("card 4111111111111111", ["card"]),
        ("amex 3782 822463 10005", ["card"]),
        ("me@example.com or 415-555-0123", ["email", "phone"]),
        ("It was 1969.", []),
        ("Between 2019-2023, on 2023-01-15.", []),
        ("I have 42 cats and 7 dogs; room 1234, extension 555.", []),
        ("Is 1234 5678 1234 5678 a card?", []),  # 16 digits, fails the Luhn check
        ("Order 1234567812345678.", []),
        ("Version 1.2.3 costs $19.99, pi is 3.14159265358979.", []),
        ("Send it @ noon to the team.", []),
    ],
)
def test_find_pii(text, kinds):
    assert find_pii(text) == kinds


def _users_rows(n_users: int, per_user: int, anonymous: int) -> list[dict]:
    rows = [
        {"user_id": f"user-{u}", "prompt": f"prompt {u}.{k}"}
        for k in range(per_user)
        for u in range(n_users)
    ]
    return rows + [{"user_id": None, "prompt": f"anonymous {k}"} for k in range(anonymous)]


def test_split_by_user_keeps_each_user_on_one_side_and_is_deterministic():
    rows = _users_rows(n_users=50, per_user=3, anonymous=40)
    train, held = split_by_user(rows, eval_fraction=0.3, seed=7)
    assert sorted(map(id, train + held)) == sorted(map(id, rows))
    assert [r for r in rows if r in train] == train  # original order kept
    train_users = {r["user_id"] for r in train if r["user_id"]}
    held_users = {r["user_id"] for r in held if r["user_id"]}
    assert train_users and held_users and not train_users & held_users
    # rows without a user are assigned one by one, so they land on both sides
    assert any(r["user_id"] is None for r in train) and any(r["user_id"] is None for r in held)
    assert split_by_user(rows, eval_fraction=0.3, seed=7) == (train, held)
    assert any(split_by_user(rows, 0.3, seed)[1] != held for seed in range(8, 12))


def test_split_by_user_fraction_is_about_right():
    rows = _users_rows(n_users=2000, per_user=1, anonymous=0)
    _, held = split_by_user(rows, eval_fraction=0.2, seed=0)
    assert 0.17 < len(held) / len(rows) < 0.23


def test_split_by_user_both_sides_non_empty_when_possible():
    rows = _users_rows(n_users=2, per_user=2, anonymous=0)
    for seed in range(5):
        train, held = split_by_user(rows, eval_fraction=1e-12, seed=seed)
        assert len(held) == 2 and len(train) == 2  # one whole user each
        train, held = split_by_user(rows, eval_fraction=1.0, seed=seed)
        assert len(held) == 2 and len(train) == 2
    one_user = _users_rows(n_users=1, per_user=3, anonymous=0)
    train, held = split_by_user(one_user, eval_fraction=1e-12, seed=0)
    assert (len(train), len(held)) == (3, 0)


def test_split_by_user_zero_fraction_keeps_everything_in_train():
    rows = _users_rows(n_users=5, per_user=2, anonymous=3)
    assert split_by_user(rows, eval_fraction=0.0, seed=1) == (rows, [])
    with pytest.raises(ValueError, match="eval_fraction"):
        split_by_user(rows, eval_fraction=1.5, seed=1)


def test_split_by_user_custom_user_field():
    rows = [{"author": f"a{k % 4}", "prompt": str(k)} for k in range(20)]
    train, held = split_by_user(rows, eval_fraction=0.5, seed=3, user_field="author")
    assert train and held
    assert not {r["author"] for r in train} & {r["author"] for r in held}
