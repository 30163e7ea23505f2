"""Agreement between labelers and the consensus of their rankings, computed by hand."""

import pytest

from instructray.orchestrator.labeling.quality import agreement, consensus, pair_agreement


def test_pair_agreement_counts_pairs_ordered_alike():
    # (0,1) alike, (0,2) alike, (1,2) opposite
    assert pair_agreement([[0], [1], [2]], [[0], [2], [1]]) == (2, 3)
    # a tie agrees only with a tie: (0,1) tied against ordered, (0,2) and (1,2) alike
    assert pair_agreement([[0, 1], [2]], [[0], [1], [2]]) == (2, 3)
    assert pair_agreement([[0, 1], [2]], [[1, 0], [2]]) == (3, 3)


def test_agreement_over_tasks_overall_and_per_labeler():
    rankings = [
        (1, "alice", [[0], [1], [2]]),
        (1, "bob", [[0], [2], [1]]),  # with alice: 2 of 3
        (2, "alice", [[0], [1]]),
        (2, "bob", [[0], [1]]),  # with alice: 1 of 1
        (2, "carol", [[1], [0]]),  # with alice 0 of 1, with bob 0 of 1
        (3, "carol", [[0], [1]]),  # nobody else ranked task 3: not counted
    ]
    out = agreement(rankings)
    assert out["agreement"] == pytest.approx(3 / 6) and out["pairs"] == 6
    assert out["by_labeler"]["alice"] == {"agreement": pytest.approx(3 / 5), "pairs": 5}
    assert out["by_labeler"]["bob"] == {"agreement": pytest.approx(3 / 5), "pairs": 5}
    assert out["by_labeler"]["carol"] == {"agreement": 0.0, "pairs": 2}
    assert agreement([(1, "alice", [[0], [1]])]) == {
        "agreement": None,
        "pairs": 0,
        "by_labeler": {},
    }


@pytest.mark.parametrize(
    ("rankings", "expected"),
    [
        ([[[2], [0, 1]]], [[2], [0, 1]]),  # one ranking is its own consensus
        # margins 0>2: 3, 0>1: 1, 1>2: 1 -> 0, 1, 2
        ([[[0], [1], [2]], [[0], [2], [1]], [[1], [0], [2]]], [[0], [1], [2]]),
        # a cycle, each margin 1: 0>1 and 1>2 lock first (by pair), 2>0 would close it
        ([[[0], [1], [2]], [[1], [2], [0]], [[2], [0], [1]]], [[0], [1], [2]]),
        ([[[0], [1]], [[1], [0]]], [[0, 1]]),  # no majority: a tie
        # 0 over both; 1 and 2 split 1-1: they tie below 0
        ([[[0], [1], [2]], [[0], [2], [1]]], [[0], [1, 2]]),
        # a tie counts for neither: 2 over 1 by one ranking to none
        ([[[0], [1, 2]], [[0], [2], [1]]], [[0], [2], [1]]),
    ],
)
def test_consensus_by_ranked_pairs(rankings, expected):
    assert consensus(rankings) == expected
