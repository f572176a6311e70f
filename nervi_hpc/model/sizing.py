"""A `model:` section (a ModelSpec) made a `ModelConfig` for one collection: the preset, its
overrides, the parameter grids, and `target_cr` sizing (the widths whose whole archive fits the
ratio asked for)."""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import torch
from torch import nn

from ..errors import ModelError
from .config import ModelConfig, with_parameter_grids
from .network import NeRVI
from .spec import ModelSpec


def preset(name: str, height: int, width: int) -> ModelConfig:
    """A named configuration resolved for height × width: `paper` (exactly the paper), `nerv`
    `grid` (feature grids, periodic φ, soft compositing) or `balanced` (the default: grid with
    channels toward full resolution)."""
    return model_config(ModelSpec.parse({"preset": name}), height, width)


SIZED_MIN_CHANNELS = 4


def model_config(spec: ModelSpec, height: int, width: int, *, count: int | None = None,
                 num_params: int = 3, grids: Mapping[str, Sequence[float]] | None = None) -> ModelConfig:
    """The `model:` section of dataset.yaml, resolved for `count` images of height × width.

    The preset with its overrides; when the spec is sized for a compression ratio
    (`ModelSpec.sized_for_cr`), the largest c2 (with c1 = c2·c1_share and at least
    SIZED_MIN_CHANNELS channels per block) whose archive at the spec's bits per weight fits
    count·H·W·3 / target_cr bytes. `grids` (each parameter's sampled values, in input order)
    fills in `periods` and `grid_size`.
    """
    config = spec.base.resolved(height, width)
    if grids is not None:
        config = with_parameter_grids(config, grids)
        num_params = len(grids)
    target = spec.sized_for_cr
    if target is None:
        return config
    if count is None:
        raise ModelError("model.target_cr: the image count is needed to size the model")
    return sized_for(config, height, width, num_params, count=count, target_cr=target, bits=spec.archive_bits)


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
ARCHIVE_TENSOR_BYTES = 96          # one tensor's JSON entry besides its name, its min/scale included
CODE_TABLE_BYTES_PER_SYMBOL = 4 / 3  # the code table: a byte per symbol in base64


def estimated_archive_bytes(model: nn.Module, bits: int) -> float:
    """The size of `model`'s archive at `bits` bits without entropy-coding gains (which are
    ≈ 3–5 %): payload, each tensor's entry (its min/scale included), the code table and the
    metadata."""
    tensors = [(name, math.prod(t.shape)) for name, t in model.state_dict().items() if t.is_floating_point()]
    payload = sum(numel for _, numel in tensors) * bits / 8
    entries = sum(ARCHIVE_TENSOR_BYTES + len(name) for name, _ in tensors)
    return ARCHIVE_FIXED_BYTES + payload + entries + CODE_TABLE_BYTES_PER_SYMBOL * 2 ** bits
