"""The config reference page, docs/reference/config.md: generated from the config's dataclasses,
it lists every field, and the committed page is what the code generates now."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from instructray.orchestrator.config import Config
from instructray.orchestrator.config.load import REFERENCE_PAGE, config_reference

ROOT = Path(__file__).parents[3]


def test_the_committed_page_is_what_the_schema_generates():
    page = (ROOT / REFERENCE_PAGE).read_text()
    assert page == config_reference(), (
        f"{REFERENCE_PAGE} differs from the config's dataclasses: run `make config-reference`"
    )


def test_the_page_has_a_row_for_every_field_with_its_docstring():
    page = (ROOT / REFERENCE_PAGE).read_text()
    rows = [line for line in page.splitlines() if line.startswith("| `")]
    keys = []
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(section.default_factory()):
            keys.append(f"{section.name}.{f.name}")
            row = next(r for r in rows if r.startswith(f"| `{section.name}.{f.name}` |"))
            assert f.metadata["doc"].replace("|", "\\|") in row, f.name
    assert len(rows) == len(keys) == len(set(keys))
