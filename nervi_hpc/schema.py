"""The strict builder every configuration goes through: `build(cls, raw, where)` turns parsed YAML
into a frozen dataclass and checks each key against the fields (an unknown key names itself and
lists the valid ones) and each value against the field's type and `check` (a bad value names
the field and the value); `read_yaml` refuses what is malformed or an alias bomb; `to_dict` is
the inverse of `build`. A value type (`Grid`, a parameter's values; model.spec.ModelSpec, the
`model:` section) is built by its own `parse(raw, where)` and written back by its `to_data()`."""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .errors import ConfigError, NerviError


def check(predicate, message: str):
    """Field metadata: a value must satisfy `predicate`; `message` says what was expected."""
    return {"check": (predicate, message)}
MAX_GRID_VALUES = 1_000_000   # values of one parameter grid ({start, stop, step} is checked before it is built)
MAX_YAML_VALUES = 100_000     # values a YAML file may expand to: aliases make a 600-byte file a billion


@dataclass(frozen=True)
class Grid:
    """Sorted, distinct values of one parameter. YAML: a number, a list, or {start, stop, step}
    (stop inclusive when it lies on the step)."""

    values: tuple[float, ...]

    def to_data(self) -> list[float]:
        return list(self.values)

    @classmethod
    def parse(cls, raw: Any, where: str) -> "Grid":
        if isinstance(raw, bool):
            raise ConfigError(f"{where}: expected a number, a list or {{start, stop, step}}, got {raw!r}")
        if isinstance(raw, (int, float)):
            values = [float(raw)]
        elif isinstance(raw, list):
            values = [_number(v, f"{where}[{i}]") for i, v in enumerate(raw)]
        elif isinstance(raw, dict):
            spec = build(_Range, raw, where)
            count = math.floor((spec.stop - spec.start) / spec.step + 1e-9) + 1
            if count > MAX_GRID_VALUES:
                raise ConfigError(f"{where}: {{start: {spec.start:g}, stop: {spec.stop:g}, step: {spec.step:g}}} "
                                  f"has {count:,} values (at most {MAX_GRID_VALUES:,})")
            values = [spec.start + i * spec.step for i in range(count)]
        else:
            raise ConfigError(f"{where}: expected a number, a list or {{start, stop, step}}, got {raw!r}")
        if not values:
            raise ConfigError(f"{where}: empty grid")
        if len(set(values)) != len(values):
            raise ConfigError(f"{where}: repeated values in {values}")
        return cls(tuple(sorted(values)))


@dataclass(frozen=True)
class _Range:
    start: float
    stop: float
    step: float = field(metadata=check(lambda v: v > 0, "a positive step"))

    def __post_init__(self):
        if self.stop < self.start:
            raise ConfigError(f"stop {self.stop} < start {self.start}")


def build(cls, raw: Any, where: str = ""):
    """Build dataclass `cls` from a parsed YAML mapping, validating keys, types and checks."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'top level'}: expected a mapping, got {_show(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in raw:
        if key not in fields:
            raise ConfigError(f"{_join(where, str(key))}: unknown key {key!r} "
                              f"(valid: {', '.join(fields)})")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        here = _join(where, name)
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{here}: missing (required)")
            continue
        value = _convert(hints[name], raw[name], here)
        predicate, expected = f.metadata.get("check", (None, None))
        if predicate is not None and not predicate(value):
            raise ConfigError(f"{here}: bad value {_show(raw[name])} (expected {expected})")
        values[name] = value
    try:
        return cls(**values)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}" if where else str(e)) from None


def _convert(tp, raw, where):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return raw
    if origin in (Union, types.UnionType):
        if raw is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if all(dataclasses.is_dataclass(a) for a in options):
            return _build_tagged(options, raw, where)
        return _convert(options[0], raw, where) if len(options) == 1 else _first_match(options, raw, where)
    if origin is Literal:
        if raw not in args:
            raise ConfigError(f"{where}: bad value {_show(raw)} (expected one of {', '.join(map(str, args))})")
        return raw
    if isinstance(tp, type) and hasattr(tp, "parse") and hasattr(tp, "to_data"):  # a value type
        try:
            return tp.parse(raw, where)
        except NerviError as e:  # a value type's own error kind (ModelError) reads as the config's
            raise ConfigError(str(e)) from None
    if dataclasses.is_dataclass(tp):
        return build(tp, raw, where)
    if origin is tuple:
        items = _sequence(raw, where, expand_scalar=len(args) > 1 and args[1] is not Ellipsis)
        if args and args[-1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(items))
        if len(items) == 1 and len(args) > 1 and len(set(args)) == 1:
            items = items * len(args)  # `size: 256` means [256, 256]
        if len(items) != len(args):
            raise ConfigError(f"{where}: bad value {_show(raw)} (expected {len(args)} items)")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, items)))
    if origin is list:
        return [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(_sequence(raw, where))]
    if origin is dict:
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a mapping, got {_show(raw)}")
        return {str(k): _convert(args[1], v, f"{where}.{k}") for k, v in raw.items()}
    if tp is bool:
        if not isinstance(raw, bool):
            raise ConfigError(f"{where}: bad value {_show(raw)} (expected true or false)")
        return raw
    if tp is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ConfigError(f"{where}: bad value {_show(raw)} (expected an integer)")
        return raw
    if tp is float:
        return _number(raw, where)
    if tp is str:
        if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
            raise ConfigError(f"{where}: bad value {_show(raw)} (expected a string)")
        return str(raw)
    raise TypeError(f"config type {tp!r} not supported")  # a programming error, not user input


def _build_tagged(options, raw, where):
    """A union of sections chosen by their `kind` key (e.g. the source)."""
    kinds = {typing.get_args(typing.get_type_hints(o)["kind"])[0]: o for o in options}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {_show(raw)}")
    if "kind" not in raw:
        raise ConfigError(f"{where}.kind: missing (one of {', '.join(kinds)})")
    if raw["kind"] not in kinds:
        raise ConfigError(f"{where}.kind: bad value {_show(raw['kind'])} (expected one of {', '.join(kinds)})")
    return build(kinds[raw["kind"]], raw, where)


def _first_match(options, raw, where):
    """The value as the first option that accepts it; else one error naming every option."""
    expected = []
    for option in options:
        try:
            return _convert(option, raw, where)
        except ConfigError as e:
            expected.append(str(e).rpartition("(expected ")[2].rstrip(")"))
    raise ConfigError(f"{where}: bad value {_show(raw)} (expected {' or '.join(expected)})")


def _sequence(raw, where, expand_scalar=False):
    if isinstance(raw, list):
        return raw
    if expand_scalar and isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return [raw]
    raise ConfigError(f"{where}: bad value {_show(raw)} (expected a list)")


def _number(raw, where) -> float:
    try:  # YAML and JSON integers are unbounded: float(2**1100) overflows
        value = float(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool) else math.nan
    except OverflowError:
        value = math.inf
    if not math.isfinite(value):
        raise ConfigError(f"{where}: bad value {_show(raw)} (expected a finite number)")
    return value


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _show(raw) -> str:
    text = repr(raw)
    return text if len(text) <= 60 else text[:57] + "..."


def read_yaml(path: str | os.PathLike) -> Any:
    """Parse a YAML file; a missing or malformed file is a one-line ConfigError naming it."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
        size = _expanded_size(data, {})
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested too deeply") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{at}: {problem}") from None
    if size > MAX_YAML_VALUES:
        how = "endlessly (an alias inside itself)" if size == math.inf else f"to {size:,} values"
        raise ConfigError(f"{path}: expands {how} through YAML aliases (at most {MAX_YAML_VALUES:,} "
                          f"values); is it an alias bomb?")
    return data


def _expanded_size(value, sizes: dict[int, float | None]) -> float:
    """How many values `value` holds once its shared (aliased) parts are copied out: counted
    once per distinct object (memo `sizes`), so a bomb is measured without being walked; inf
    for a structure that contains itself (`&a [*a]`)."""
    if not isinstance(value, (dict, list)):
        return 1
    if id(value) in sizes:
        return math.inf if sizes[id(value)] is None else sizes[id(value)]
    sizes[id(value)] = None  # being counted: meeting it again inside means a cycle
    items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
    sizes[id(value)] = 1 + sum(_expanded_size(v, sizes) for v in items)
    return sizes[id(value)]


def to_dict(obj) -> Any:
    """A config dataclass as plain YAML/JSON data (the inverse of `build`)."""
    if hasattr(obj, "to_data"):
        return obj.to_data()
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
