"""Loading and overriding: defaults, then YAML files, then `--section.key=value`; the field list
of `--help`. Every key is checked against the schema; an unknown one names the nearest."""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import re
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from instructray.orchestrator.config.fields import describe_range
from instructray.orchestrator.config.schema import Config, ConfigError

logger = logging.getLogger(__name__)


def sections() -> dict[str, type]:
    """Section name -> its dataclass."""
    return {f.name: f.default_factory for f in dataclasses.fields(Config)}  # type: ignore[misc]


def field_types(section_cls: type) -> dict[str, Any]:
    return typing.get_type_hints(section_cls)


def all_keys() -> list[str]:
    return [f"{s}.{f.name}" for s, cls in sections().items() for f in dataclasses.fields(cls)]


def _nearest(key: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(key, choices, n=1, cutoff=0.0)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return " | ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    return getattr(tp, "__name__", str(tp))


_YAML11_FLOAT = re.compile(r"^[+-]?\d+(\.\d*)?[eE][+-]?\d+$")


def _coerce(value: Any, tp: Any) -> Any:
    """Return value as type tp, or raise TypeError. ints are accepted where floats are."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise TypeError
    if isinstance(tp, types.UnionType) or origin is typing.Union:
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
            if arg is not type(None):
                try:
                    return _coerce(value, arg)
                except TypeError:
                    pass
        raise TypeError
    if origin is list:
        if not isinstance(value, list):
            raise TypeError
        return [_coerce(v, typing.get_args(tp)[0]) for v in value]
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and _YAML11_FLOAT.match(value):
        return float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp in (str, bool) and type(value) is tp:
        return value
    raise TypeError


def set_key(cfg: Config, key: str, value: Any, origin: str) -> None:
    """Set `section.key` on cfg, checking the key and the value's type; origin names the source."""
    section, _, name = key.partition(".")
    secs = sections()
    if section not in secs or not name:
        raise ConfigError(f"{origin}: unknown config key '{key}'{_nearest(key, all_keys())}")
    types_ = field_types(secs[section])
    if name not in types_:
        raise ConfigError(f"{origin}: unknown config key '{key}'{_nearest(key, all_keys())}")
    try:
        coerced = _coerce(value, types_[name])
    except TypeError:
        raise ConfigError(
            f"{origin}: {key} = {value!r} is a {type(value).__name__}, "
            f"expected {_type_name(types_[name])}"
        ) from None
    setattr(getattr(cfg, section), name, coerced)


def _apply_mapping(cfg: Config, data: Any, origin: str) -> None:
    if data is None:
        return
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping of sections, got {type(data).__name__}")
    for section, values in data.items():
        if section not in sections():
            raise ConfigError(
                f"{origin}: unknown config section '{section}'"
                f"{_nearest(str(section), list(sections()))}"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: section '{section}' must be a mapping of keys")
        for name, value in values.items():
            set_key(cfg, f"{section}.{name}", value, origin)


def normalize_overrides(rest: list[str]) -> list[str]:
    """Accept both `--a.b=v` and `--a.b v`."""
    out, i = [], 0
    while i < len(rest):
        arg = rest[i]
        if arg.startswith("--") and "=" not in arg and i + 1 < len(rest):
            nxt = rest[i + 1]
            if not nxt.startswith("--"):
                out.append(f"{arg}={nxt}")
                i += 2
                continue
        out.append(arg)
        i += 1
    return out


def parse_override(arg: str) -> tuple[str, Any]:
    """`--section.key=value` -> (key, value parsed as a YAML scalar or list)."""
    if not arg.startswith("-") and (arg.endswith((".yaml", ".yml")) or Path(arg).is_file()):
        raise ConfigError(f"unexpected argument '{arg}': did you mean --config {arg}?")
    if not arg.startswith("--") or "=" not in arg:
        raise ConfigError(f"override '{arg}' must look like --section.key=value")
    key, _, raw = arg[2:].partition("=")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key, value


class _DuplicateKey(yaml.constructor.ConstructorError):
    def __init__(self, key: Any, first: int, second: int):
        super().__init__(problem=f"duplicate key {key!r}")
        self.key, self.first, self.second = key, first, second


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping, at any depth (PyYAML
    keeps the last silently: a second `run:` section would replace the first whole). Keys a
    merge (`<<: *anchor`) brings in may be overridden, as YAML means them to be."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        # Where each mapping lies ('run.'), for the message: a parent is constructed first.
        self._where: dict[yaml.Node, str] = {}

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        where = self._where
        lines: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in lines:
                    raise _DuplicateKey(f"{where.get(node, '')}{key}", lines[key], line)
                lines[key] = line
            except TypeError:  # an unhashable key: the SafeLoader's own error says so
                break
            if isinstance(value_node, yaml.MappingNode):
                where[value_node] = f"{where.get(node, '')}{key}."
        return super().construct_mapping(node, deep)


def _read_yaml(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise ConfigError(f"config file {path} {what}")
    try:
        return yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except _DuplicateKey as e:
        raise ConfigError(
            f"{path}: key '{e.key}' is given twice, on line {e.first} and line {e.second} "
            "(YAML would keep only the second): keep one"
        ) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None


def load_config(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    defaults: str | Path | None = None,
) -> Config:
    """Defaults, then the YAML file, then `--section.key=value` overrides, in that order.
    `defaults` names a YAML file applied first: a stage's own defaults (the demo's)."""
    cfg = Config()
    for origin in (defaults, path):
        if origin is not None:
            data = _read_yaml(origin)
            if data is None:
                logger.warning("config file %s is empty: every setting keeps its default", origin)
            _apply_mapping(cfg, data, str(origin))
    for arg in overrides:
        key, value = parse_override(arg)
        set_key(cfg, key, value, f"override --{key}")
    return cfg


def dump_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (loadable by load_config)."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def field_descriptions() -> list[tuple[str, str, list[tuple[str, str, str, str]]]]:
    """Every field of every section: (section, its doc, [(field, default as YAML, type and
    range, doc)]), in the schema's order; what --help and the config reference print."""
    out = []
    for section, cls in sections().items():
        hints, defaults, rows = field_types(cls), cls(), []
        for f in dataclasses.fields(cls):
            default = yaml.safe_dump(getattr(defaults, f.name), default_flow_style=True).strip()
            default = default.removesuffix("\n...").removesuffix("...").strip()
            if "\n" in default:  # a string with a newline: JSON's quoting (YAML reads it too)
                default = json.dumps(getattr(defaults, f.name))
            where = describe_range(f.metadata.get("range", {}))
            kind = _type_name(hints[f.name]) + (f", {where}" if where else "")
            rows.append((f.name, default, kind, f.metadata["doc"]))
        out.append((section, cls.__doc__ or "", rows))
    return out


def describe_fields() -> str:
    """Every field with its type, default and docstring, by section (for --help)."""
    lines = []
    for section, doc, rows in field_descriptions():
        lines.append(f"{section}: {doc}")
        for name, default, kind, text in rows:
            lines.append(f"  --{section}.{name}={default}  [{kind}]")
            lines.append(f"      {text}")
    return "\n".join(lines)


REFERENCE_PAGE = "docs/reference/config.md"  # written by config_reference (make config-reference)


def config_reference() -> str:
    """The config reference page (Markdown): every field of every section with its default,
    type and range, and docstring, made from the schema as --help is. REFERENCE_PAGE holds it;
    a test fails when the two differ."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [
        "# Config reference",
        "",
        "Every setting, by section: set it in a `--config` YAML file (`section: {key: value}`) or "
        "as `--section.key=value` on the command line; `instructray STAGE --help` prints the same. "
        "This page is generated from the config's dataclasses "
        "(`orchestrator/config/schema.py`, `stages.py`, `rollout.py`): after changing a field, run "
        "`make config-reference`.",
    ]
    for section, doc, rows in field_descriptions():
        lines += ["", f"## {section}", "", " ".join(doc.split()), ""]
        lines.append("| key | default | type | what it does |")
        lines.append("|---|---|---|---|")
        for name, default, kind, text in rows:
            lines.append(
                f"| `{section}.{name}` | `{cell(default)}` | {cell(kind)} | {cell(text)} |"
            )
    return "\n".join(lines) + "\n"
