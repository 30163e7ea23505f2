"""A config field: its docstring and the range a number must lie in, declared once beside it
(schema.py) and read by the checks (checks.py) and `--help` (load.py)."""

from __future__ import annotations

from dataclasses import field
from typing import Any


def param(
    default: Any,
    doc: str,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
) -> Any:
    """A config field with its docstring (shown by `instructray <stage> --help`) and, for a
    number, the range it must lie in (checked by `validate_config`; null passes)."""
    bounds = {k: v for k, v in (("gt", gt), ("ge", ge), ("lt", lt), ("le", le)) if v is not None}
    metadata = {"doc": doc, "range": bounds}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def describe_range(bounds: dict[str, float]) -> str:
    """The range of `param(gt=.., ge=.., lt=.., le=..)` as a reader writes it: '> 0',
    '>= 0', 'in (0, 1]'."""
    lo = ("(", bounds["gt"]) if "gt" in bounds else ("[", bounds["ge"]) if "ge" in bounds else None
    hi = (")", bounds["lt"]) if "lt" in bounds else ("]", bounds["le"]) if "le" in bounds else None
    if lo and hi:
        return f"in {lo[0]}{lo[1]:g}, {hi[1]:g}{hi[0]}"
    if lo:
        return f"{'>' if lo[0] == '(' else '>='} {lo[1]:g}"
    if hi:
        return f"{'<' if hi[0] == ')' else '<='} {hi[1]:g}"
    return ""


def in_range(value: float, bounds: dict[str, float]) -> bool:
    """Whether value lies in the range of `param(...)`'s bounds."""
    return (
        ("gt" not in bounds or value > bounds["gt"])
        and ("ge" not in bounds or value >= bounds["ge"])
        and ("lt" not in bounds or value < bounds["lt"])
        and ("le" not in bounds or value <= bounds["le"])
    )
