"""The service inside a driver's process, bots ranking through it with a labeler function, and the
wait for a batch's rankings."""

import pytest

from instructray.orchestrator.labeling.service import (
    Bots,
    LabelingTimeout,
    Service,
    wait_for_rankings,
)
from instructray.orchestrator.labeling.store import Store


def by_length(prompt, responses):
    """Shortest first; answers of one length tie."""
    lengths = sorted({len(r) for r in responses})
    return [[i for i, r in enumerate(responses) if len(r) == n] for n in lengths]


def test_bots_rank_a_batch_through_the_service_and_the_wait_ends(db_url):
    store = Store(db_url, gold_every=0)
    rows = [{"prompt": f"Q{i}", "responses": ["ab", "a", "abc", "xy"]} for i in range(6)]
    store.publish(rows, overlap=2, batch="round-2")
    service = Service(store).start()
    bots = Bots(service.url, [store.add_labeler(f"bot{i}") for i in range(3)], by_length).start()
    seen = []
    try:
        status = wait_for_rankings(store, "round-2", 12, timeout_s=120, progress=seen.append)
    finally:
        bots.stop()
        service.stop()
    assert not bots.errors, bots.errors
    assert status["rankings"] == 12 and seen[-1]["rankings"] == 12
    assert status["quality"]["agreement"] == 1.0  # the same function agrees with itself
    rows = store.export(consensus=True)
    store.close()
    assert len(rows) == 6 and all(r["ranking"] == [[1], [0, 3], [2]] for r in rows)


def test_the_wait_stops_at_its_timeout_saying_how_far_it_got(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'l.db'}")
    store.publish([{"prompt": "Q", "responses": ["a", "b"]}], batch="round-2")
    with pytest.raises(LabelingTimeout, match=r"^labeling: 0 of 1 rankings of round-2 after 0 s"):
        wait_for_rankings(store, "round-2", 1, timeout_s=0.2, poll_s=0.05)
    store.close()
