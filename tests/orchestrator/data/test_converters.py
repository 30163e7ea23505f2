"""HH-RLHF and OASST1 converters: fixtures give hand-checked ranking rows; bad rows are named."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from instructray.orchestrator.data import DataError, load_rows
from instructray.orchestrator.data.converters import (
    RANKING_FORMATS,
    convert_rankings,
    hh_rlhf_rows,
    oasst1_rows,
)

FIXTURES = Path(__file__).resolve().parents[3] / "tests" / "fixtures"
HH = FIXTURES / "hh_rlhf_sample.jsonl"
OASST = FIXTURES / "oasst1_sample.jsonl"

# user_id of the OASST1 fixture's prompter messages
U1 = "8995e573-be30-5744-ae69-46276ef50029"
U3 = "a489c014-7f0b-5c7d-9a82-5f4b70562a9e"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


EXPECTED_HH = [
    {
        "messages": [user("What is the capital of France?")],
        "responses": ["The capital of France is Paris.", "France is a country in Europe."],
        "ranking": [0, 1],
        "user_id": None,
    },
    {
        "messages": [user("Can you help me write a thank-you note to my neighbor?")],
        "responses": [
            "Sure! Here is a short one: Thank you so much for watering my plants while I was away.",
            "Sure, but why bother? Neighbors don't care.",
        ],
        "ranking": [0, 1],
        "user_id": None,
    },
    {
        "messages": [
            user("I want to start running."),
            assistant("That's great! How often would you like to run?"),
            user("Maybe three times a week."),
        ],
        "responses": [
            "Start with 20 minutes at an easy pace and add a few minutes each week.",
            "Just run as far as you can every time.",
        ],
        "ranking": [0, 1],
        "user_id": None,
    },
    {
        "messages": [
            user("How do I boil an egg?"),
            assistant("Put the egg in boiling water."),
            user("For how long?"),
            assistant("I would say about 9 minutes for a hard-boiled egg."),
            user("And a soft-boiled one?"),
        ],
        "responses": [
            "I would go with 6 minutes, then cool it in cold water.",
            "I would not eat soft-boiled eggs.",
        ],
        "ranking": [0, 1],
        "user_id": None,
    },
    {
        "messages": [user("Tell me a joke about cats.")],
        "responses": [
            "Why did the cat sit on the computer? To keep an eye on the mouse.",
            "I don't know any jokes.",
        ],
        "ranking": [0, 1],
        "user_id": None,
    },
]

PYTHON_Q = "What is a good way to learn Python as a complete beginner?"
PYTHON_BEST = (
    "Start with a beginner book or course, then build small projects you care about, such as a "
    "script that renames your photos."
)
EXPECTED_OASST = [
    {  # tree 1 root: replies in created_date order have ranks 1, 2, 0
        "messages": [user(PYTHON_Q)],
        "responses": [
            "Pick a free interactive course and write a little code every day.",
            "Read the official language reference from start to finish before writing any code.",
            PYTHON_BEST,
        ],
        "ranking": [2, 0, 1],
        "user_id": U1,
    },
    {  # tree 1 follow-up under the best reply: ranks 1, 0
        "messages": [
            user(PYTHON_Q),
            assistant(PYTHON_BEST),
            user("Which beginner book would you recommend?"),
        ],
        "responses": [
            "Any book is fine.",
            '"Automate the Boring Stuff with Python" is a popular choice: it teaches the basics '
            "through practical tasks.",
        ],
        "ranking": [1, 0],
        "user_id": U1,
    },
    {  # tree 2 root: the deleted reply and the rank-null reply are gone; ranks 2, 1 remain
        "messages": [user("Explain in one paragraph why the sky is blue.")],
        "responses": [
            "Blue is the color people like most.",
            "Sunlight contains all colors, but air molecules scatter short blue wavelengths much "
            "more than long red ones (Rayleigh scattering), so blue light reaches our eyes from "
            "every direction of the sky.",
        ],
        "ranking": [1, 0],
        "user_id": U3,
    },
]  # the follow-up "Then why are sunsets red?" has a single reply: no row


def test_hh_rlhf_fixture_converts_exactly():
    assert hh_rlhf_rows(read_jsonl(HH), "hh.jsonl") == EXPECTED_HH


def test_oasst1_fixture_converts_exactly():
    rows = read_jsonl(OASST)
    assert {r["role"] for r in rows} == {"prompter", "assistant"}
    assert oasst1_rows(rows, "oasst.jsonl") == EXPECTED_OASST


def test_oasst1_does_not_depend_on_input_order_within_a_tree():
    rows = read_jsonl(OASST)
    tree1, tree2 = rows[:7], rows[7:]
    shuffled = tree1[::-1] + tree2  # prompters now come root last: output follows their position
    out = oasst1_rows(shuffled, "oasst.jsonl")
    assert out == [EXPECTED_OASST[1], EXPECTED_OASST[0], EXPECTED_OASST[2]]


def test_fixtures_load_through_load_rows_to_the_same_rows():
    assert convert_rankings(load_rows(str(HH)), "hh-rlhf", str(HH)) == EXPECTED_HH
    assert convert_rankings(load_rows(str(OASST)), "oasst1", str(OASST)) == EXPECTED_OASST


def test_convert_rankings_dispatches_and_names_the_valid_formats():
    assert set(RANKING_FORMATS) == {"hh-rlhf", "oasst1"}
    assert convert_rankings(read_jsonl(HH), "hh-rlhf", "hh.jsonl") == EXPECTED_HH
    with pytest.raises(DataError) as e:
        convert_rankings([], "shp", "data.jsonl")
    assert (
        str(e.value) == "data.jsonl: unknown ranking format 'shp', expected one of hh-rlhf, oasst1"
    )


def test_hh_rlhf_final_replies_sharing_a_start_split_at_the_last_assistant_turn():
    row = {
        "chosen": "\n\nHuman: Is it safe?\n\nAssistant: I think so, yes.",
        "rejected": "\n\nHuman: Is it safe?\n\nAssistant: I think not.",
    }
    assert hh_rlhf_rows([row], "s") == [
        {
            "messages": [user("Is it safe?")],
            "responses": ["I think so, yes.", "I think not."],
            "ranking": [0, 1],
            "user_id": None,
        }
    ]


GOOD_HH = {
    "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a color.\n\nAssistant: Blue.",
    "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a color.\n\nAssistant: No.",
}


@pytest.mark.parametrize(
    ("bad", "field", "problem"),
    [
        ({"rejected": GOOD_HH["rejected"]}, "chosen", "missing"),
        ({"chosen": GOOD_HH["chosen"], "rejected": None}, "rejected", "missing"),
        (
            {"chosen": GOOD_HH["chosen"], "rejected": ["No."]},
            "rejected",
            "must be a non-empty string, got list ['No.']",
        ),
        ({"chosen": "\n\nHuman: Hi there", "rejected": "\n\nHuman: Hi"}, "chosen", "Assistant"),
        (
            {"chosen": GOOD_HH["chosen"], "rejected": "\n\nHuman: Bye\n\nAssistant: Bye."},
            "rejected",
            "does not share",
        ),
        (  # the dialogues part before the final turn: chosen has a turn rejected lacks
            {"chosen": GOOD_HH["chosen"], "rejected": "\n\nHuman: Hi\n\nAssistant: Hey."},
            "chosen",
            "does not share",
        ),
        (
            {"chosen": "Hi\n\nAssistant: Hello!", "rejected": "Hi\n\nAssistant: Go away."},
            "chosen",
            "before the first",
        ),
        ("not a row", "chosen", "must be an object, got str 'not a row'"),
    ],
)
def test_hh_rlhf_bad_row_is_named(bad, field, problem):
    with pytest.raises(DataError) as e:
        hh_rlhf_rows([GOOD_HH, bad], "hh.jsonl")
    msg = str(e.value)
    assert msg.startswith(f"hh.jsonl: row 2: field '{field}': "), msg
    assert problem in msg and "\n" not in msg


def oasst_msg(mid, parent, role, text, rank=None, *, deleted=False, date=None, user_id=None):
    """One row with every OASST1 column."""
    return {
        "message_id": mid,
        "parent_id": parent,
        "user_id": user_id or f"user-{mid}",
        "created_date": date or f"2023-04-01T10:00:{len(mid):02d}.000000+00:00",
        "text": text,
        "role": role,
        "lang": "en",
        "review_count": 3,
        "review_result": True,
        "deleted": deleted,
        "rank": rank,
        "synthetic": False,
        "model_name": None,
        "detoxify": None,
        "message_tree_id": "root",
        "tree_state": "ready_for_export",
        "emojis": {"name": [], "count": []},
        "labels": {"name": [], "value": [], "count": []},
    }


def test_oasst1_keeps_the_nine_best_of_more_ranked_replies():
    rows = [oasst_msg("root", None, "prompter", "Q")]
    for k in range(11):  # created in order r00..r10; rank 10 - k, so the last is best
        date = f"2023-04-01T11:00:{k:02d}.000000+00:00"
        rows.append(oasst_msg(f"r{k:02d}", "root", "assistant", f"A{k}", 10 - k, date=date))
    [out] = oasst1_rows(rows, "s")
    assert out["responses"] == [f"A{k}" for k in range(2, 11)]  # ranks 10 and 9 dropped
    assert out["ranking"] == [8, 7, 6, 5, 4, 3, 2, 1, 0]


def test_oasst1_ties_in_created_date_order_by_message_id():
    date = "2023-04-01T11:00:00.000000+00:00"
    rows = [
        oasst_msg("root", None, "prompter", "Q"),
        oasst_msg("m-b", "root", "assistant", "B", 0, date=date),
        oasst_msg("m-a", "root", "assistant", "A", 1, date=date),
    ]
    [out] = oasst1_rows(rows, "s")
    assert out["responses"] == ["A", "B"] and out["ranking"] == [1, 0]


def test_oasst1_replies_of_equal_rank_tie():
    rows = [oasst_msg("root", None, "prompter", "Q")]
    for k, rank in enumerate([1, 0, 1, 2]):
        date = f"2023-04-01T11:00:{k:02d}.000000+00:00"
        rows.append(oasst_msg(f"r{k}", "root", "assistant", f"A{k}", rank, date=date))
    [out] = oasst1_rows(rows, "s")
    assert out["ranking"] == [[1], [0, 2], [3]]


def test_oasst1_skips_threads_through_deleted_messages():
    rows = [
        oasst_msg("root", None, "prompter", "Q"),
        oasst_msg("gone", "root", "assistant", "deleted reply", 0, deleted=True),
        oasst_msg("next", "gone", "prompter", "follow-up under a deleted reply"),
        oasst_msg("x1", "next", "assistant", "X1", 0),
        oasst_msg("x2", "next", "assistant", "X2", 1),
        oasst_msg("solo", None, "prompter", "deleted prompt", deleted=True),
        oasst_msg("y1", "solo", "assistant", "Y1", 0),
        oasst_msg("y2", "solo", "assistant", "Y2", 1),
    ]
    assert oasst1_rows(rows, "s") == []


def _bad_rank(rows):
    rows[2]["rank"] = "first"


def _missing_column(rows):
    del rows[3]["rank"]


def _bad_role(rows):
    rows[1]["role"] = "bot"


def _duplicate_id(rows):
    rows[4]["message_id"] = rows[3]["message_id"]


def _missing_parent(rows):
    rows[4]["parent_id"] = "no-such-message"


def _bad_text(rows):
    rows[0]["text"] = None


@pytest.mark.parametrize(
    ("corrupt", "row", "field"),
    [
        (_bad_rank, 2, "rank"),
        (_missing_column, 3, "rank"),
        (_bad_role, 1, "role"),
        (_duplicate_id, 4, "message_id"),
        (_missing_parent, 4, "parent_id"),
        (_bad_text, 0, "text"),
    ],
)
def test_oasst1_bad_row_is_named(corrupt, row, field):
    rows = copy.deepcopy(read_jsonl(OASST))
    corrupt(rows)
    with pytest.raises(DataError) as e:
        oasst1_rows(rows, "oasst.jsonl")
    msg = str(e.value)
    assert msg.startswith(f"oasst.jsonl: row {row + 1}: field '{field}': "), msg
    assert "\n" not in msg
