"""What the console shows of progress bars where it is a file (a Ray job's logs): a few lines per
bar, not one per update; a bar's late state does not open it again."""

import io

from instructray.orchestrator.console import _BarLines


def state(uuid, x, closed=False, desc="sft loss 1.0"):
    return {"uuid": uuid, "x": x, "total": 4, "unit": "step", "desc": desc, "closed": closed}


def test_a_bar_in_a_file_writes_its_closing_line_and_ignores_late_copies():
    out = io.StringIO()
    lines = _BarLines(out, every_s=3600)
    for x in range(5):  # updates within the interval write nothing
        lines(state("a", x))
    lines(state("a", 4, closed=True))
    lines(state("a", 4, closed=True))  # the same state again, after the close
    lines(state("a", 4))
    written = out.getvalue().splitlines()
    assert len(written) == 1, written
    assert written[0].startswith("sft loss 1.0: 100%|") and "4/4" in written[0]


def test_a_running_bar_writes_a_line_each_interval():
    out = io.StringIO()
    lines = _BarLines(out, every_s=0)  # every update is past the interval
    for x in range(3):
        lines(state("b", x, desc="ppo"))
    lines(state("c", 1, desc="rm"))
    written = out.getvalue().splitlines()
    assert [w.split(":")[0] for w in written] == ["ppo", "ppo", "ppo", "rm"]
    assert "2/4" in written[2] and "1/4" in written[3]
