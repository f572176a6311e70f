"""The model's configuration, torch-free: `ModelConfig` (every field bounded, so a config read
from an untrusted archive builds in bounded time), the presets, and the upscale plan that fits a
network to an image size. A dataset's `model:` section is a ModelSpec (model/spec.py), checked
with it when the spec is loaded, without torch; nervi_hpc.model.sizing sizes a config for a
collection."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

import numpy as np

from ..errors import ConfigError, ModelError
from ..schema import build, check

MAX_KERNEL = 15         # largest convolution kernel of a bilinear block
MAX_FACTOR = 5          # largest PixelShuffle factor of one upscale block
MAX_STEM_CELLS = 256    # h0·w0 at most: rb2's last layer has (c1·h0·w0)² weights
MAX_GRID_NODES = 64     # finest feature-grid nodes along one parameter
# Upper bounds of every field, so that a config read from an untrusted archive builds (on the meta
# device) in bounded time; each is far above anything trained here (paper: c1 128, c2 1024, ω0 30).
MAX_INPUTS = 64         # input parameters (and per-parameter entries of periods, grid_size, periodic)
MAX_WIDTH = 8192        # c1, c2, min_channels
MAX_OMEGA0 = 1e4
MAX_DECAY = 1024.0
MAX_UPSCALE_BLOCKS = 16  # 2^16 > the largest image side an archive may declare
MAX_GRID_FEATURES = 256
MAX_GRID_LEVELS = 16
MAX_GRID_DIMS = 8       # parameters a feature grid spans: it interpolates 2^dims corners
MAX_GRID_CELLS = 1 << 24  # nodes of the finest feature grid
EXAMPLE_SIZES = "e.g. 64×64, 256×256, 400×400, 1024×1024, 1920×1080"


def _width(v) -> bool:
    return 1 <= v <= MAX_WIDTH


def _pair_or_none(v) -> bool:
    return v is None or (len(v) == 2 and all(1 <= x <= MAX_STEM_CELLS for x in v))


def _factors_or_none(v) -> bool:
    return v is None or (len(v) <= MAX_UPSCALE_BLOCKS and all(2 <= s <= MAX_FACTOR for s in v))


def _sizes_or_none(v) -> bool:
    return v is None or (len(v) <= MAX_INPUTS and all(1 <= x <= MAX_GRID_NODES for x in v))


def _periods_or_none(v) -> bool:
    return v is None or (len(v) <= MAX_INPUTS and all(x == 0 or 2 <= x < math.inf for x in v))


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network; the defaults are the paper's model.

    `stem` (h0, w0) and `upscale` (PixelShuffle factors) are chosen from the image size by
    `plan_upscale` when None; `resolved()` fills them in so a stored config never depends on it.
    `grid_features` > 0 adds learnable feature grids over the parameter space (`grid_levels`
    resolutions, the finest `grid_size` nodes per parameter) beside the positional encoding.
    `periodic` names parameters that wrap around (φ: 359° is next to 0°); `periods` holds each
    input's period in normalised units (0: none) and `grid_size` the finest grid, both filled in
    from the collection by `model_config`. `composite` "soft" blends RGB over the background by
    the predicted mask (alpha), "hard" (the paper) picks one where mask > 0.5. `stem_layer`
    "single" makes the start grid with one layer c1 → c1·h0·w0 instead of the paper's residual
    block, whose (c1·h0·w0)² weights rule out a large start grid. `block` "bilinear" replaces
    the paper's Conv3×3 → PixelShuffle blocks by `BilinearBlock`s (bilinear upsampling, then a
    `kernel`² convolution): a quarter of the weights per block, so more channels at full size.
    `latent_features` > 0 adds latent maps to the start grid: feature grids over the parameters
    (as `grid_features`, `grid_levels` levels) whose nodes are (latent_features, h0, w0) maps,
    interpolated between views and concatenated to the MLP's start grid (HiNeRV's and FFNeRV's
    grids of spatial latents): each view's spatial layout is learned directly, not through the MLP.
    `c1_share`: c1 as a share of c2 when `target_cr` sizes the model (the paper's 128/1024 = 1/8
    at 1024²; 1/4 by default).
    """

    arch: Literal["nervi", "nerv"] = "nervi"
    c1: int = field(default=128, metadata=check(_width, f"an integer in 1..{MAX_WIDTH}"))
    c2: int = field(default=1024, metadata=check(_width, f"an integer in 1..{MAX_WIDTH}"))
    pe_levels: int = field(default=4, metadata=check(lambda v: 0 <= v <= 32, "0..32"))
    pe_include_input: bool = False
    omega0: float = field(default=30.0, metadata=check(lambda v: 0 < v <= MAX_OMEGA0,
                                                       f"a number in (0, {MAX_OMEGA0:g}]"))
    norm: Literal["batch", "none"] = "batch"
    channel_decay: float = field(default=2.0, metadata=check(lambda v: 1 <= v <= MAX_DECAY,
                                                             f"a number in 1..{MAX_DECAY:g}"))
    min_channels: int = field(default=1, metadata=check(_width, f"an integer in 1..{MAX_WIDTH}"))
    stem: tuple[int, int] | None = field(default=None, metadata=check(_pair_or_none,
                                                                      f"[h0, w0], each in 1..{MAX_STEM_CELLS}"))
    upscale: tuple[int, ...] | None = field(default=None, metadata=check(
        _factors_or_none, f"at most {MAX_UPSCALE_BLOCKS} factors in 2..{MAX_FACTOR}"))
    grid_features: int = field(default=0, metadata=check(lambda v: 0 <= v <= MAX_GRID_FEATURES,
                                                         f"0 (no grid) to {MAX_GRID_FEATURES}"))
    grid_levels: int = field(default=3, metadata=check(lambda v: 1 <= v <= MAX_GRID_LEVELS,
                                                       f"an integer in 1..{MAX_GRID_LEVELS}"))
    grid_size: tuple[int, ...] | None = field(default=None, metadata=check(
        _sizes_or_none, f"at most {MAX_INPUTS} sizes in 1..{MAX_GRID_NODES}"))
    periodic: tuple[str, ...] = field(default=(), metadata=check(lambda v: len(v) <= MAX_INPUTS,
                                                                 f"at most {MAX_INPUTS} names"))
    periods: tuple[float, ...] | None = field(default=None, metadata=check(
        _periods_or_none, f"at most {MAX_INPUTS} values, each 0 or a finite period ≥ 2"))
    composite: Literal["hard", "soft"] = "hard"
    stem_layer: Literal["residual", "single"] = "residual"
    block: Literal["pixelshuffle", "bilinear"] = "pixelshuffle"
    kernel: int = field(default=3, metadata=check(lambda v: 1 <= v <= MAX_KERNEL and v % 2 == 1,
                                                  f"an odd size in 1..{MAX_KERNEL}"))
    latent_features: int = field(default=0, metadata=check(lambda v: 0 <= v <= MAX_GRID_FEATURES,
                                                           f"0 (none) to {MAX_GRID_FEATURES}"))
    c1_share: float = field(default=0.25, metadata=check(lambda v: 0 < v <= 4, "a share in (0, 4]"))

    def __post_init__(self):
        for name in ("stem", "upscale", "grid_size", "periodic", "periods"):  # lists → tuples: hashable
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(getattr(self, name)))
        for f in dataclasses.fields(self):
            predicate, expected = f.metadata.get("check", (None, None))
            value = getattr(self, f.name)
            if predicate is not None and not predicate(value):
                raise ModelError(f"model.{f.name}: bad value {value!r} (expected {expected})")
        if self.pe_levels == 0 and not self.pe_include_input:
            raise ModelError("model: pe_levels is 0 and pe_include_input is false, so the network has no input")

    def resolved(self, height: int, width: int) -> "ModelConfig":
        """This config with `stem` and `upscale` fixed for an image of height × width."""
        h0, w0, factors = plan_upscale(height, width, self.stem, self.upscale, fine=self.block == "bilinear")
        return dataclasses.replace(self, stem=(h0, w0), upscale=factors)

    @property
    def soft(self) -> bool:
        """Whether decoded images blend RGB over the background (`composite(..., soft=)`)."""
        return self.composite == "soft"

    def channels(self, blocks: int) -> list[int]:
        """Output channels of each upscale block: c2, c2/decay, …, never below min_channels."""
        return [max(self.min_channels, round(self.c2 / self.channel_decay ** i)) for i in range(blocks)]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (tuples become lists)."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, raw: Any) -> "ModelConfig":
        """The inverse of to_dict; unknown keys and bad values raise ModelError naming them."""
        try:
            return build(cls, raw, "model")
        except ConfigError as e:
            raise ModelError(str(e)) from None


GRID = ModelConfig(grid_features=16, periodic=("phi",), composite="soft")
PRESETS = {
    "paper": ModelConfig(),
    "nerv": ModelConfig(arch="nerv"),
    "grid": GRID,
    # grid with capacity toward full resolution: channels fall by 1.5 a block, at least 8
    "balanced": dataclasses.replace(GRID, channel_decay=1.5, min_channels=8),
    "hinervi": ModelConfig(c1=32, c2=64, pe_levels=6, norm="none", channel_decay=1.5, min_channels=12,
                           grid_features=8, periodic=("phi",), composite="soft", stem_layer="single",
                           block="bilinear", c1_share=0.5),
}
DEFAULT_PRESET = "balanced"
PERIODS = {"phi": 360.0}  # the period of each parameter that `periodic` may name


def with_parameter_grids(config: ModelConfig, grids: Mapping[str, Sequence[float]]) -> ModelConfig:
    """`config` with `periods` and `grid_size` taken from the parameters' sampled values: a
    periodic parameter's grid wraps around with one node per step of its sampling."""
    unknown = sorted(set(config.periodic) - set(PERIODS))
    if unknown:
        raise ModelError(f"model.periodic: {', '.join(unknown)} has no known period "
                         f"(periodic parameters: {', '.join(PERIODS)})")
    periods, sizes = [], []
    for name, values in grids.items():
        low, high = min(values), max(values)
        period = PERIODS.get(name) if name in config.periodic and high > low else None
        if period is not None and high - low >= period:
            raise ModelError(f"model.periodic: {name} spans {low:g}..{high:g}, a full period ({period:g}) or more")
        periods.append(0.0 if period is None else 2 * period / (high - low))
        steps = round(period / min(np.diff(sorted(values)))) if period is not None else len(values)
        sizes.append(max(1, min(MAX_GRID_NODES, steps)))
    return dataclasses.replace(config, periods=tuple(periods), grid_size=tuple(sizes))


def plan_upscale(height: int, width: int, stem: tuple[int, int] | None = None,
                 upscale: tuple[int, ...] | None = None, fine: bool = False) -> tuple[int, int, tuple[int, ...]]:
    """Start grid (h0, w0) and PixelShuffle factors with h0·∏factors = height, w0·∏factors = width.

    By default the common factor is the largest divisor of gcd(height, width) made of 2, 3 and 5
    that leaves a start grid of at least 2 on each side; it is split into factors ≤ 5, largest
    first, with pairs of 2 merged into 4 until two factors are ≥ 4 (the paper: 1024² → 2×2 and
    4,4,2,2,2,2,2). `fine` (bilinear blocks) leaves a start grid of at least 4 on each side and
    keeps the primes as factors (1024² → 4×4 and eight 2s): one block per octave of resolution.
    `stem` or `upscale` override the choice.
    """
    size = f"{height}×{width}"
    if upscale is not None:
        factors = tuple(upscale)
        total = math.prod(factors)
        if height % total or width % total:
            raise ModelError(f"image size {size}: upscale factors {list(factors)} (×{total}) do not divide it")
        h0, w0 = height // total, width // total
        if stem is not None and tuple(stem) != (h0, w0):
            raise ModelError(f"image size {size}: stem {stem[0]}×{stem[1]} and upscale factors "
                             f"{list(factors)} do not multiply to it (the factors need {h0}×{w0})")
    else:
        if stem is not None:
            h0, w0 = stem
            if height % h0 or width % w0 or height // h0 != width // w0:
                raise ModelError(f"image size {size}: stem {h0}×{w0} does not divide it by one common factor")
            total = height // h0
        else:
            total = _common_factor(height, width, smallest_stem=4 if fine else 2)
            h0, w0 = height // total, width // total
        factors = _split(total, merge=not fine)
        if factors is None:
            raise ModelError(f"image size {size}: the upscale from stem {h0}×{w0} (×{total}) "
                             f"is not a product of the factors 2, 3 and 5")
    if h0 * w0 > MAX_STEM_CELLS or not factors:
        why = f"{h0 * w0} cells, at most {MAX_STEM_CELLS}" if factors else "no upscaling at all"
        raise ModelError(f"image size {size} has no upscale plan: its start grid would be {h0}×{w0} "
                         f"({why}); height and width need a large common divisor made of 2, 3 and 5 "
                         f"({EXAMPLE_SIZES})")
    return h0, w0, factors


def _prime_factors(n: int) -> list[int] | None:
    """n as a list of primes ≤ MAX_FACTOR, largest first; None if n has a larger prime."""
    primes = []
    for p in (5, 3, 2):
        while n % p == 0:
            primes.append(p)
            n //= p
    return primes if n == 1 else None


def _common_factor(height: int, width: int, smallest_stem: int) -> int:
    common = math.gcd(height, width)
    return max((d for d in range(1, common + 1) if common % d == 0 and smallest_stem * d <= min(height, width)
                and _prime_factors(d) is not None), default=1)


def _split(total: int, merge: bool = True) -> tuple[int, ...] | None:
    """Upscale factors for `total`: its primes, with `merge` pairs of 2 merged into 4 until two
    are ≥ 4."""
    factors = _prime_factors(total)
    if factors is None:
        return None
    while merge and sum(s >= 4 for s in factors) < 2 and factors.count(2) >= 2:
        factors.remove(2)
        factors.remove(2)
        factors.append(4)
    return tuple(sorted(factors, reverse=True))
