"""The `.nervi` header's `meta` object: what an archive says about its model and its collection.

One schema for the writer (nervi_hpc.stages.compress builds an `ArchiveMeta` and writes
`to_json()`) and every reader (`from_json` validates field by field, because a reader must trust
nothing in a file it is handed). The container around it (magic, lengths, codec table, payload,
checksums) is nervi_hpc.codec.archive.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import __version__
from ..data.sources import MAX_IMAGES
from ..errors import ArchiveError, ModelError
from ..model.config import MAX_INPUTS, ModelConfig

META_VERSION = 1
MAX_SIDE = 16384            # image height/width an archive may declare
MAX_PARAMETERS = MAX_INPUTS



@dataclass(frozen=True)
class Parameter:
    """One input parameter: its trained range and its sorted training grid values."""

    name: str
    low: float
    high: float
    grid: tuple[float, ...]


@dataclass(frozen=True)
class ArchiveMeta:
    """What an archive says about its model and the collection it encodes.

    `points` holds the training parameter rows only when they are not the full product of the
    grids (e.g. a Cinema database with holes); otherwise the grid product is the training set.
    `training` holds plain JSON figures (epochs, steps, seconds, loss, psnr, …), or None values.
    """

    model: ModelConfig
    parameters: tuple[Parameter, ...]
    height: int
    width: int
    background: tuple[int, int, int]
    mode: str
    count: int
    bits: int
    training: dict[str, Any] = field(default_factory=dict)
    points: tuple[tuple[float, ...], ...] | None = None
    source: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters)

    @property
    def ranges(self) -> list[tuple[float, float]]:
        return [(p.low, p.high) for p in self.parameters]

    def grid(self) -> np.ndarray:
        """float64 (count, P): every training parameter row (the grid product, first name slowest)."""
        if self.points is not None:
            return np.array(self.points, dtype=np.float64).reshape(self.count, len(self.parameters))
        axes = np.meshgrid(*(np.array(p.grid, dtype=np.float64) for p in self.parameters), indexing="ij")
        return np.stack(axes, axis=-1).reshape(self.count, len(self.parameters))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": {"meta_version": META_VERSION, "producer": f"nervi-hpc {__version__}"},
            "model": self.model.to_dict(),
            "parameters": [{"name": p.name, "range": [p.low, p.high], "grid": list(p.grid)}
                           for p in self.parameters],
            "points": None if self.points is None else [list(row) for row in self.points],
            "image": {"height": self.height, "width": self.width, "background": list(self.background),
                      "mode": self.mode, "count": self.count, "source": self.source},
            "training": self.training,
            "quantization": {"bits": self.bits},
        }

    @classmethod
    def from_json(cls, raw: Any) -> ArchiveMeta:
        """Validate an archive's `meta` object; ArchiveError naming the first bad field.
        Keys this version does not know are ignored (a newer writer may add figures)."""
        meta = _object(raw, "meta")
        version = _object(meta.get("format"), "meta.format").get("meta_version")
        if type(version) is not int or not 1 <= version <= META_VERSION:
            raise ArchiveError(f"meta.format.meta_version {version!r} is not one this build reads "
                               f"(1..{META_VERSION}); upgrade nervi-hpc")
        try:
            model = ModelConfig.from_dict(meta.get("model"))
        except ModelError as e:
            raise ArchiveError(f"meta.{e}") from None
        image = _object(meta.get("image"), "meta.image")
        height, width = (_integer(image.get(k), f"meta.image.{k}", 1, MAX_SIDE) for k in ("height", "width"))
        count = _integer(image.get("count"), "meta.image.count", 1, MAX_IMAGES)
        background = image.get("background")
        if (not isinstance(background, list) or len(background) != 3
                or not all(type(v) is int and 0 <= v <= 255 for v in background)):
            raise ArchiveError(f"meta.image.background must be [r, g, b] in 0..255, got {background!r}")
        mode, source = image.get("mode"), image.get("source", "")
        if not isinstance(mode, str) or not isinstance(source, str):
            raise ArchiveError("meta.image.mode and meta.image.source must be strings")
        bits = _integer(_object(meta.get("quantization"), "meta.quantization").get("bits"),
                        "meta.quantization.bits", 1, 64)
        training = _object(meta.get("training"), "meta.training")
        parameters = _parameters(meta.get("parameters"), count)
        points = _points(meta.get("points"), parameters, count)
        return cls(model=model, parameters=parameters, height=height, width=width,
                   background=tuple(background), mode=mode, count=count, bits=bits,
                   training=training, points=points, source=source)


def _object(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise ArchiveError(f"{where} must be an object")
    return value


def _integer(value, where: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise ArchiveError(f"{where} must be an integer in {low}..{high}, got {value!r}")
    return value


def _finite_numbers(values, where: str) -> tuple[float, ...]:
    numbers = None
    if isinstance(values, list) and all(type(v) in (int, float) for v in values):
        with contextlib.suppress(OverflowError):  # JSON integers are unbounded: float(2**1100) overflows
            numbers = tuple(float(v) for v in values)
    if numbers is None or not all(math.isfinite(v) for v in numbers):
        raise ArchiveError(f"{where} must be a list of finite numbers")
    return numbers


def _parameters(raw, count: int) -> tuple[Parameter, ...]:
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_PARAMETERS:
        raise ArchiveError(f"meta.parameters must be a list of 1..{MAX_PARAMETERS} parameters")
    parameters = []
    for i, entry in enumerate(raw):
        where = f"meta.parameters[{i}]"
        entry = _object(entry, where)
        name = entry.get("name")
        if not isinstance(name, str) or not name or name in (p.name for p in parameters):
            raise ArchiveError(f"{where}.name must be a non-empty string, distinct from the others")
        low_high = _finite_numbers(entry.get("range"), f"{where}.range")
        grid = _finite_numbers(entry.get("grid"), f"{where}.grid")
        if len(low_high) != 2 or low_high[0] > low_high[1] or not math.isfinite(low_high[1] - low_high[0]):
            raise ArchiveError(f"{where}.range must be [low, high] with low ≤ high and a finite span")
        if (not 1 <= len(grid) <= count or any(a >= b for a, b in zip(grid, grid[1:]))
                or grid[0] < low_high[0] or grid[-1] > low_high[1]):
            raise ArchiveError(f"{where}.grid must be 1..{count} increasing values inside its range")
        parameters.append(Parameter(name, *low_high, grid))
    return tuple(parameters)


def _points(raw, parameters: tuple[Parameter, ...], count: int) -> tuple[tuple[float, ...], ...] | None:
    if raw is None:
        product = math.prod(len(p.grid) for p in parameters)
        if product != count:
            raise ArchiveError(f"meta.image.count is {count} but the parameter grids hold {product} points "
                               f"(and meta.points is absent)")
        return None
    if not isinstance(raw, list) or len(raw) != count:
        raise ArchiveError(f"meta.points must be a list of {count} rows")
    rows = tuple(_finite_numbers(row, "meta.points[…]") for row in raw)
    if any(len(row) != len(parameters) for row in rows):
        raise ArchiveError(f"meta.points rows must hold {len(parameters)} values")
    values = np.array(rows, dtype=np.float64)
    low, high = np.array([[p.low, p.high] for p in parameters]).T
    if ((values < low) | (values > high)).any():
        raise ArchiveError("meta.points has a row outside the parameter ranges")
    return rows
