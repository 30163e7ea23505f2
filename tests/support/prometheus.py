"""Reading what Ray exports for Prometheus: the `instructray_` samples of its metrics
endpoints (the job test scrapes them while a run goes on)."""

from __future__ import annotations

import re
import urllib.request

SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(targets: list[str]) -> dict[str, list[tuple[dict[str, str], float]]]:
    """`instructray_` samples of every target: metric name -> [(labels, value)]."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for target in targets:
        try:
            body = urllib.request.urlopen(f"http://{target}/metrics", timeout=5).read().decode()
        except OSError:
            continue
        for line in body.splitlines():
            m = SAMPLE.match(line)
            if m and "instructray_" in m["name"]:
                labels = dict(LABEL.findall(m["labels"] or ""))
                out.setdefault(m["name"], []).append((labels, float(m["value"])))
    return out


def values_of(seen, name: str, **labels: str) -> list[float]:
    return [
        v
        for got, v in seen.get(f"ray_{name}", [])
        if all(got.get(k) == want for k, want in labels.items())
    ]
