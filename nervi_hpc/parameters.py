"""Parameter rows as people write and read them: `name=value` assignments, CSV lists, labels
(`t=3 theta=45 phi=90`) and file names (`t3_theta45_phi90.png`) that read back exactly."""

from __future__ import annotations

import csv
import math
import os
from typing import Mapping, Sequence

import numpy as np

from .errors import ParameterError


def number(value: float) -> str:
    """The shortest text that reads back as `value` (45.0 → "45", 0.1 → "0.1")."""
    return np.format_float_positional(float(value), trim="-")


def label(names: Sequence[str], row: np.ndarray) -> str:
    """`t=3 theta=45 phi=90` for a parameter row."""
    return " ".join(f"{n}={number(v)}" for n, v in zip(names, row))


def png_name(names: Sequence[str], row: np.ndarray) -> str:
    """`t3_theta45_phi90.png`: readable, and an image-folder pattern `t{t}_theta{theta}_phi{phi}.png`
    reads the values back."""
    return "_".join(f"{n}{number(v)}" for n, v in zip(names, row)) + ".png"


def png_pattern(names: Sequence[str]) -> str:
    """The image-folder pattern that reads `png_name`'s values back: `t{t}_theta{theta}_phi{phi}.png`."""
    return "_".join(f"{n}{{{n}}}" for n in names) + ".png"




def row_from_values(names: Sequence[str], values: Mapping[str, float], where: str = "") -> np.ndarray:
    """A parameter row in `names` order from name → value; ParameterError for a missing or an
    unknown name (`where` prefixes the message, e.g. a file and row)."""
    prefix = f"{where}: " if where else ""
    unknown = [k for k in values if k not in names]
    if unknown:
        raise ParameterError(f"{prefix}unknown parameter {unknown[0]!r} "
                             f"(the archive's parameters: {', '.join(names)})")
    missing = [n for n in names if n not in values]
    if missing:
        raise ParameterError(f"{prefix}missing parameter {missing[0]!r} "
                             f"(the archive's parameters: {', '.join(names)})")
    return np.array([values[n] for n in names], dtype=np.float64)


def parse_assignments(names: Sequence[str], assignments: Sequence[str]) -> np.ndarray:
    """One (1, P) row from `name=value` strings (the CLI's repeated --param)."""
    values: dict[str, float] = {}
    for text in assignments:
        name, sep, value = text.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ParameterError(f"--param {text!r}: expected name=value, e.g. theta=45")
        if name in values:
            raise ParameterError(f"--param {name}: given twice")
        values[name] = _parse_float(value, f"--param {name}")
    return row_from_values(names, values)[None, :]


def read_params_csv(path: str | os.PathLike, names: Sequence[str]) -> np.ndarray:
    """(n, P) rows of a CSV file whose header names the parameters (any order)."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                raise ParameterError(f"{path}: empty file; expected a header row naming "
                                     f"{', '.join(names)}")
            rows = []
            for record in reader:
                where = f"{path}: line {reader.line_num}"
                if None in record:
                    raise ParameterError(f"{where}: more values than the header has columns")
                rows.append(row_from_values(
                    names, {k.strip(): _parse_float(v, f"{where} {k.strip()}") for k, v in record.items()}, where))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ParameterError(f"{path}: cannot read the parameter list ({e})") from None
    if not rows:
        raise ParameterError(f"{path}: no parameter rows after the header")
    return np.stack(rows)


def _parse_float(text, where: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ParameterError(f"{where}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ParameterError(f"{where}: {text!r} is not a finite number")
    return value
