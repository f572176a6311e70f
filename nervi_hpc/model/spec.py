"""The `model:` section of a dataset.yaml, typed and checked once, when the spec is loaded
(torch-free): `ModelSpec` names a preset, the ModelConfig fields it overrides and how to size the
network (`target_cr`, `bits`). What depends on the images (the stem and upscale factors, the
widths a target_cr gives) is resolved later by nervi_hpc.model.sizing.model_config."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import ModelError
from .config import DEFAULT_PRESET, PRESETS, ModelConfig

MIN_BITS, MAX_BITS = 2, 16   # the bits per weight an archive may store
DEFAULT_BITS = 9
DEFAULT_TARGET_CR = 300.0
SIZING_KEYS = ("target_cr", "bits")  # keys of the section that are not ModelConfig fields
WIDTH_KEYS = frozenset({"c1", "c2"})


@dataclass(frozen=True)
class ModelSpec:
    """A checked `model:` section. Without `target_cr`, a section that names neither a preset
    nor c1/c2 is sized for DEFAULT_TARGET_CR (a collection gets a model in proportion to it),
    and `preset: paper` alone is exactly the paper."""

    preset: str = DEFAULT_PRESET
    overrides: tuple[tuple[str, Any], ...] = ()   # ModelConfig fields the section sets, in its order
    target_cr: float | None = None
    bits: int | None = None                       # as given; None: DEFAULT_BITS (`archive_bits`)
    preset_given: bool = False

    @classmethod
    def parse(cls, section: Any, where: str = "model") -> "ModelSpec":
        """The section as parsed from YAML; ModelError naming the key and the problem."""
        if not isinstance(section, dict):
            raise ModelError(f"{where}: expected a mapping, got {section!r}")
        fields = [f.name for f in dataclasses.fields(ModelConfig)]
        valid = ["preset", *SIZING_KEYS, *fields]
        for key in section:
            if key not in valid:
                raise ModelError(f"{where}.{key}: unknown key {key!r} (valid: {', '.join(valid)})")
        name = section.get("preset", DEFAULT_PRESET)
        if not isinstance(name, str) or name not in PRESETS:
            raise ModelError(f"{where}.preset: unknown preset {name!r} (presets: {', '.join(PRESETS)})")
        bits = section.get("bits")
        if bits is not None and (isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS):
            raise ModelError(f"{where}.bits: bad value {bits!r} (expected an integer in {MIN_BITS}..{MAX_BITS})")
        target = section.get("target_cr")
        if target is not None and (isinstance(target, bool) or not isinstance(target, (int, float))
                                   or not 1 < target < float("inf")):
            raise ModelError(f"{where}.target_cr: bad value {target!r} (expected a number > 1)")
        if target is not None and WIDTH_KEYS & section.keys():
            raise ModelError(f"{where}: give either target_cr or c1/c2, not both")
        spec = cls(preset=name, overrides=tuple((k, v) for k, v in section.items() if k in fields),
                   target_cr=target, bits=bits, preset_given="preset" in section)
        spec.base  # every override checked now, not when the model is built
        return spec

    @property
    def archive_bits(self) -> int:
        """The bits per weight the widths are sized for, quantization-aware training trains for
        and compress writes."""
        return DEFAULT_BITS if self.bits is None else self.bits

    @property
    def base(self) -> ModelConfig:
        """The preset with the overrides applied (not yet resolved for an image size)."""
        return ModelConfig.from_dict({**PRESETS[self.preset].to_dict(), **dict(self.overrides)})

    @property
    def sized_for_cr(self) -> float | None:
        """The compression ratio the widths are sized for; None: the preset's or given widths."""
        if self.target_cr is not None:
            return self.target_cr
        given = {k for k, _ in self.overrides}
        return None if self.preset_given or WIDTH_KEYS & given else DEFAULT_TARGET_CR

    def to_data(self) -> dict[str, Any]:
        """The section as it was written (the inverse of `parse`)."""
        section: dict[str, Any] = {"preset": self.preset} if self.preset_given else {}
        section.update(self.overrides)
        if self.target_cr is not None:
            section["target_cr"] = self.target_cr
        if self.bits is not None:
            section["bits"] = self.bits
        return section
