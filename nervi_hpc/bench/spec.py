"""A bench spec (jobs/bench/*.yaml) as typed records: the nervi variants, the baseline codecs, the
collection."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError
from ..model.spec import ModelSpec
from ..schema import check


def _label(v) -> bool:
    return bool(v) and all(c.isalnum() or c in "-_." for c in v)


LABEL = check(_label, "letters, digits, '-', '_' or '.'")


@dataclass(frozen=True)
class NerviVariant:
    """One nervi-hpc configuration: a training run per target CR."""

    label: str = field(metadata=LABEL)
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    target_cr: list[float] | None = field(default=None, metadata=check(
        lambda v: v is None or (v and all(x > 1 for x in v)), "a non-empty list of numbers > 1"))
    max_minutes: float | None = field(default=None, metadata=check(lambda v: v is None or v > 0,
                                                                   "a positive number of minutes"))
    bits: list[int] | None = field(default=None, metadata=check(
        lambda v: v is None or (v and all(2 <= b <= 16 for b in v)), "a non-empty list of bit counts in 2..16"))
    prune: list[float] = field(default_factory=list, metadata=check(
        lambda v: all(0 < p < 1 for p in v), "fractions in (0, 1)"))

    def __post_init__(self):
        if "target_cr" in self.model:
            raise ConfigError(f"{self.label}: model.target_cr: give the values in the variant's own target_cr list")

    def runs(self) -> list[tuple[str, dict[str, Any]]]:
        """(setting, model section) of each training run."""
        if self.target_cr is None:
            return [("model", dict(self.model))]
        return [(f"cr{cr:g}", {**self.model, "target_cr": cr}) for cr in self.target_cr]

    @property
    def own_bits(self) -> int:
        """The bits the run is sized and trained for (model.bits, default 9)."""
        return ModelSpec.parse(self.model).archive_bits

    def archives(self) -> list[tuple[str, int, float | None]]:
        """(method, bits, prune fraction) of each archive written from a run's checkpoint (by
        default one at the run's own bits, whose method is the label)."""
        return [(self.label + ("" if b == self.own_bits else f"-b{b}") + ("" if p is None else f"-p{p:g}"), b, p)
                for b in self.bits or [self.own_bits] for p in (None, *self.prune)]


@dataclass(frozen=True)
class BaselineEntry:
    """One codec, optionally under its own label, with its own sweep and options."""

    codec: str
    label: str | None = field(default=None, metadata=check(lambda v: v is None or _label(v),
                                                           "letters, digits, '-', '_' or '.'"))
    sweep: list[float] | None = field(default=None, metadata=check(lambda v: v is None or len(v) > 0,
                                                                   "a non-empty list"))
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BenchSpec:
    """A bench spec (see the module docstring)."""

    dataset: str | None = None
    store: str | None = None
    nervi: list[NerviVariant] = field(default_factory=list)
    baselines: list[Any] | None = None   # codec names or BaselineEntry mappings; None: every codec
    threads: int | None = field(default=None, metadata=check(lambda v: v is None or v > 0, "a positive count"))

    def __post_init__(self):
        if self.dataset is None and self.store is None:
            raise ConfigError("give dataset: (a dataset.yaml to render and ingest) or store: (a renders store)")
        if self.nervi and self.dataset is None:
            raise ConfigError("nervi: variants train with a dataset's settings; give dataset: as well")


@dataclass(frozen=True)
class Task:
    """One point of the bench: its result folder and how to make it."""

    label: str                      # the spec's label it belongs to (--only selects by it)
    method: str
    setting: str
    kind: str                       # "nervi" or "codec"
    make: Callable[[Path], None]    # writes OUT/results/<method>/<setting>/
