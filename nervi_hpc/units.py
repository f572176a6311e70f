"""How the project shows and coerces numbers, one way each: sizes in bytes, durations, counted
nouns, bits per parameter, and floats that JSON can hold (finite, else None)."""

from __future__ import annotations

import math
import numbers
from typing import Any

BYTE_UNITS = ("B", "kB", "MB", "GB", "TB")  # decimal (1 kB = 1000 B), as `du --si` and rich


def human_bytes(count: float) -> str:
    """`count` bytes as `512 B`, `60.5 kB`, `2.1 MB`, …"""
    step = 0
    while count >= 1000 and step < len(BYTE_UNITS) - 1:
        count, step = count / 1000, step + 1
    return f"{count:.0f} B" if step == 0 else f"{count:.1f} {BYTE_UNITS[step]}"


def human_duration(seconds: float | None) -> str:
    """`42s`, `3m 07s`, `2h 05m`; empty for None."""
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def counted(number: int, noun: str) -> str:
    """`1 shard`, `3 shards`."""
    return f"{number} {noun}{'s' * (number != 1)}"


def bits_per_parameter(nbytes: int, parameters: int) -> float:
    """What `nbytes` (an archive, a payload) costs per quantised parameter."""
    return 8.0 * nbytes / max(parameters, 1)


def finite_or_none(value: Any) -> float | None:
    """`value` as a float when it is a finite number, else None (JSON has no inf or NaN)."""
    return float(value) if _real(value) and math.isfinite(value) else None


def number_or_none(value: Any) -> float | None:
    """`value` as a float, infinity included (the PSNR of an exact image); NaN and non-numbers None."""
    return float(value) if _real(value) and not math.isnan(value) else None


def _real(value: Any) -> bool:
    return isinstance(value, numbers.Real)  # numpy's floats and ints included
