"""A `model:` section made a `ModelConfig` for one collection: the preset, its overrides, the
parameter grids, and `target_cr` sizing (the widths whose whole archive fits the ratio asked for)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..codec.quantize import DEFAULT_BITS, MAX_BITS, MIN_BITS, channel_count
from ..errors import ModelError
from .config import DEFAULT_PRESET, PRESETS, ModelConfig, with_parameter_grids
from .network import NeRVI

def preset(name: str, height: int, width: int) -> ModelConfig:
    """A named configuration resolved for height × width: `paper` (exactly the paper), `nerv`
    or `grid` (the default: feature grids, periodic φ, soft compositing)."""
    return model_config({"preset": name}, height, width)


DEFAULT_TARGET_CR = 300.0
SIZED_MIN_CHANNELS = 4
SIZING_KEYS = ("target_cr", "bits")  # keys of the `model:` section that are not ModelConfig fields


def model_config(section: dict[str, Any], height: int, width: int, *, count: int | None = None,
                 num_params: int = 3, grids: Mapping[str, Sequence[float]] | None = None) -> ModelConfig:
    """The `model:` section of dataset.yaml, resolved for `count` images of height × width.

    `preset` (default DEFAULT_PRESET, `grid`) names the base; any other ModelConfig key overrides
    that field. `target_cr` sizes the widths instead: the largest c2 (with c1 = c2·c1_share and
    at least SIZED_MIN_CHANNELS channels per block) whose archive at `bits` bits per weight
    (archive_bits: default 9) fits count·H·W·3 / target_cr bytes. A section that names neither a
    preset nor c1/c2 is sized for DEFAULT_TARGET_CR, so a collection gets a model in proportion
    to it; `preset: paper` alone is exactly the paper.
    `grids` (each parameter's sampled values, in input order) fills in `periods` and `grid_size`.
    """
    valid = ["preset", *SIZING_KEYS] + [f.name for f in dataclasses.fields(ModelConfig)]
    for key in section:
        if key not in valid:
            raise ModelError(f"model.{key}: unknown key {key!r} (valid: {', '.join(valid)})")
    name = section.get("preset", DEFAULT_PRESET)
    if not isinstance(name, str) or name not in PRESETS:
        raise ModelError(f"model.preset: unknown preset {name!r} (presets: {', '.join(PRESETS)})")
    bits = archive_bits(section)
    overrides = {k: v for k, v in section.items() if k not in ("preset", *SIZING_KEYS)}
    config = ModelConfig.from_dict({**PRESETS[name].to_dict(), **overrides}).resolved(height, width)
    if grids is not None:
        config = with_parameter_grids(config, grids)
        num_params = len(grids)
    target = section.get("target_cr")
    if target is None and not {"preset", "c1", "c2"} & section.keys():
        target = DEFAULT_TARGET_CR
    if target is None:
        return config
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not target > 1:
        raise ModelError(f"model.target_cr: bad value {target!r} (expected a number > 1)")
    if {"c1", "c2"} & section.keys():
        raise ModelError("model: give either target_cr or c1/c2, not both")
    if count is None:
        raise ModelError("model.target_cr: the image count is needed to size the model")
    return sized_for(config, height, width, num_params, count=count, target_cr=target, bits=bits)


def archive_bits(section: dict[str, Any]) -> int:
    """The quantization bits per weight of the `model:` section (`bits`, default DEFAULT_BITS):
    what `target_cr` sizes for, quantization-aware training trains for and compress writes."""
    bits = section.get("bits", DEFAULT_BITS)
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ModelError(f"model.bits: bad value {bits!r} (expected an integer in {MIN_BITS}..{MAX_BITS})")
    return bits


def sized_for(config: ModelConfig, height: int, width: int, num_params: int, count: int,
              target_cr: float, bits: int) -> ModelConfig:
    """`config` with the largest c2 (and c1 in proportion) whose archive at `bits` bits is at
    most count·H·W·3 / target_cr bytes (`estimated_archive_bytes`: the file a user gets, not
    only the weights, so the CR reached is the one asked for)."""

    def with_c2(c2: int) -> ModelConfig:
        c1 = max(8, round(c2 * config.c1_share))
        return dataclasses.replace(config, c2=c2, c1=c1, min_channels=max(config.min_channels, SIZED_MIN_CHANNELS))

    def size(c2: int) -> float:
        with torch.device("meta"):
            return estimated_archive_bytes(NeRVI(with_c2(c2), height, width, num_params), bits)

    raw_bytes = count * height * width * 3
    budget = raw_bytes / target_cr
    low, high = SIZED_MIN_CHANNELS, 4096
    if size(low) > budget:
        reach = raw_bytes / size(low)  # the largest ratio the smallest model reaches
        fits = (f"target_cr {_two_digits_down(reach):g} or lower fits" if reach > 1.01
                else "no target_cr fits: the images are smaller than any model")
        raise ModelError(f"model.target_cr: {target_cr:g} is out of reach for {count} images of {width}×{height} "
                         f"(even the smallest model makes an archive of about {size(low):,.0f} bytes, more "
                         f"than the {budget:,.0f} it leaves); {fits}")
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if size(middle) <= budget else (low, middle)
    return with_c2(low)


def _two_digits_down(x: float) -> float:
    """x rounded down to two significant digits (a ratio a user can type), at least 1.01."""
    digits = 10 ** (math.floor(math.log10(x)) - 1)
    return max(math.floor(x / digits) * digits, 1.01)


ARCHIVE_FIXED_BYTES = 2100         # prefix, checksums and the metadata JSON (≈ 1.6 kB measured)
ARCHIVE_TENSOR_BYTES = 80          # one tensor's JSON entry besides its name and min/scale
CODE_TABLE_BYTES_PER_SYMBOL = 8.25  # the JSON code table (measured: 4,214 bytes at 9 bits)


def estimated_archive_bytes(model: nn.Module, bits: int) -> float:
    """The size of `model`'s archive at `bits` bits without entropy-coding gains (which are
    ≈ 3–5 %): payload, each quantization row's float32 min/scale in base64, each tensor's entry,
    the code table and the metadata. Within 2 % of real archives' headers at 128²."""
    tensors = [(name, tuple(t.shape)) for name, t in model.state_dict().items() if t.is_floating_point()]
    payload = sum(math.prod(shape) for _, shape in tensors) * bits / 8
    rows = sum(channel_count(shape) for _, shape in tensors)
    entries = sum(ARCHIVE_TENSOR_BYTES + len(name) for name, _ in tensors)
    return ARCHIVE_FIXED_BYTES + payload + rows * 2 * 4 * 4 / 3 + entries + CODE_TABLE_BYTES_PER_SYMBOL * 2 ** bits
