"""NeRVI: parameters → image + mask (and NeRV as a configuration of the same code).

Network (ARCHITECTURE.md, "The model"): per-parameter positional encoding → two residual MLP
blocks (SIREN for NeRVI, GELU for NeRV) → reshape to a (c1, h0, w0) grid → upscale blocks
Conv3×3 → PixelShuffle → norm → GELU → Conv1×1 head → sigmoid (RGB + mask, or RGB for NeRV).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

import numpy as np

import torch
import torch.nn.functional as F
from torch import nn

from ..codec.quantize import DEFAULT_BITS, MAX_BITS, MIN_BITS, channel_count
from ..config import build, check
from ..errors import ConfigError, ModelError

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


PRESETS = {
    "paper": ModelConfig(),
    "nerv": ModelConfig(arch="nerv"),
    "grid": ModelConfig(grid_features=16, periodic=("phi",), composite="soft"),
    "hinervi": ModelConfig(c1=32, c2=64, pe_levels=6, norm="none", channel_decay=1.5, min_channels=12,
                           grid_features=8, periodic=("phi",), composite="soft", stem_layer="single",
                           block="bilinear", c1_share=0.5),
}
DEFAULT_PRESET = "grid"
PERIODS = {"phi": 360.0}  # the period of each parameter that `periodic` may name


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

    `preset` (default `paper`) names the base; any other ModelConfig key overrides that field.
    `target_cr` sizes the widths instead: the largest c2 (with c1 = c2/4 and at least
    SIZED_MIN_CHANNELS channels per block) whose archive at `bits` bits per weight (archive_bits:
    default 9) fits count·H·W·3 / target_cr bytes. A section that names neither a preset nor c1/c2 is sized for DEFAULT_TARGET_CR, so a
    collection gets a model in proportion to it; `preset: paper` alone is exactly the paper.
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


# ----------------------------------------------------------------------------------------------
# Upscale plan


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


# ----------------------------------------------------------------------------------------------
# Layers


def unit_coordinates(x: torch.Tensor, periods: Sequence[float] | None) -> torch.Tensor:
    """Inputs x ∈ [-1, 1] as u = (x + 1)/2 ∈ [0, 1], or for a periodic input u = (x + 1)/period,
    the fraction of its period (so u = 1 is u = 0 again)."""
    if periods is None:
        return (x + 1) / 2
    span = torch.tensor([p if p else 2.0 for p in periods], dtype=x.dtype, device=x.device)
    return (x + 1) / span


class PositionalEncoding(nn.Module):
    """Per input: [x (optional)], sin(2^i·π·u), cos(2^i·π·u) for i < levels, with u from
    `unit_coordinates`; a periodic input uses sin/cos(2^i·2π·u) instead, periodic in u.

    Encoding x ∈ [-1, 1] itself with the lowest frequency π would alias the two ends of the range
    (at x = ±1 every sin is 0 and every cos is (−1)^(2^i)): the first and last time step, or the
    top and bottom views, would get the same code and the network could not tell them apart.
    """

    def __init__(self, levels: int, include_input: bool, periods: Sequence[float] | None = None):
        super().__init__()
        self.levels = levels
        self.include_input = include_input
        self.periods = periods
        self.features_per_input = 2 * levels + int(include_input)
        self.base = [2 * math.pi if p else math.pi for p in periods] if periods is not None else math.pi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = torch.tensor(self.base, dtype=x.dtype, device=x.device) if self.periods is not None else math.pi
        u = unit_coordinates(x, self.periods)
        scales = 2.0 ** torch.arange(self.levels, device=x.device, dtype=x.dtype)
        angles = (u * base).unsqueeze(-1) * scales
        parts = ([x.unsqueeze(-1)] if self.include_input else []) + [torch.sin(angles), torch.cos(angles)]
        return torch.cat(parts, dim=-1).flatten(-2)


class FeatureGrid(nn.Module):
    """Learnable features on `levels` regular grids over the parameter space, interpolated
    multilinearly (wrapping around periodic inputs) and concatenated over the levels.

    The finest grid has `sizes` nodes per parameter (one per sampled value: every image gets its
    own corner); each coarser level halves them. Coarse levels share features between
    neighbouring views, fine ones hold what is particular to each.
    """

    def __init__(self, sizes: Sequence[int], periods: Sequence[float], levels: int, features: int):
        super().__init__()
        if len(sizes) > MAX_GRID_DIMS or math.prod(sizes) > MAX_GRID_CELLS:
            raise ModelError(f"model.grid_size: a feature grid over {len(sizes)} parameters with "
                             f"{math.prod(sizes):,} nodes (at most {MAX_GRID_DIMS} parameters, "
                             f"{MAX_GRID_CELLS:,} nodes)")
        self.periods = tuple(periods)
        self.resolutions = [tuple(max(1, math.ceil(n / 2 ** (levels - 1 - level))) for n in sizes)
                            for level in range(levels)]
        # (features, nodes): the archive quantizes per first axis, so each feature gets its own
        # scale, not each node (a min/scale pair per 16 values would cost almost half the bits)
        self.tables = nn.ParameterList(
            nn.Parameter(torch.empty(features, math.prod(r)).uniform_(-0.1, 0.1)) for r in self.resolutions)
        self.out_features = levels * features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = unit_coordinates(x, self.periods)
        periodic = torch.tensor([p > 0 for p in self.periods], device=x.device)
        return torch.cat([self._interpolate(table, resolution, u, periodic)
                          for table, resolution in zip(self.tables, self.resolutions)], dim=-1)

    @staticmethod
    def _interpolate(table: torch.Tensor, resolution: tuple[int, ...], u: torch.Tensor,
                     periodic: torch.Tensor) -> torch.Tensor:
        n = torch.tensor(resolution, device=u.device, dtype=u.dtype)
        position = torch.where(periodic, u * n, u * (n - 1)).clamp_min(0)
        low = position.floor()
        weight = position - low
        low = low.long()
        size = n.long()
        high = torch.where(periodic, (low + 1) % size, (low + 1).clamp_max(size - 1))
        low = torch.where(periodic, low % size, low.clamp_max(size - 1))
        strides = [math.prod(resolution[d + 1:]) for d in range(len(resolution))]
        out = 0
        for corner in range(2 ** len(resolution)):
            index, w = 0, 1
            for d, stride in enumerate(strides):
                upper = corner >> d & 1
                index = index + (high[:, d] if upper else low[:, d]) * stride
                w = w * (weight[:, d] if upper else 1 - weight[:, d])
            out = out + w.unsqueeze(-1) * table[:, index].T
        return out


class SineLayer(nn.Module):
    """sin(ω0·(Wx + b)) with SIREN's initialisation (U(±1/in) first, U(±√(6/in)/ω0) hidden)."""

    def __init__(self, in_features: int, out_features: int, omega0: float, first: bool):
        super().__init__()
        self.omega0 = omega0
        self.linear = nn.Linear(in_features, out_features)
        bound = 1 / in_features if first else math.sqrt(6 / in_features) / omega0
        with torch.no_grad():
            self.linear.weight.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.omega0 * self.linear(x))


class GeluLayer(nn.Module):
    """GELU(Wx + b): NeRV's MLP layer."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.linear(x))


class ResidualBlock(nn.Module):
    """0.5·(branch(x) + skip(x)); branch = two layers, skip = a layer when the widths differ."""

    def __init__(self, first_layer: nn.Module, second_layer: nn.Module, skip: nn.Module | None):
        super().__init__()
        self.branch = nn.Sequential(first_layer, second_layer)
        self.skip = skip if skip is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.branch(x) + self.skip(x))


class UpscaleBlock(nn.Sequential):
    """Conv3×3(in → out·s²) → PixelShuffle(s) → norm → GELU."""

    def __init__(self, in_channels: int, out_channels: int, factor: int, norm: str):
        super().__init__(
            nn.Conv2d(in_channels, out_channels * factor ** 2, kernel_size=3, padding=1),
            nn.PixelShuffle(factor),
            nn.BatchNorm2d(out_channels) if norm == "batch" else nn.Identity(),
            nn.GELU(),
        )


class BilinearBlock(nn.Sequential):
    """Bilinear ×s → Conv k×k (in → out) → norm → GELU.

    Parameter-free upsampling has no PixelShuffle checkerboard, and the convolution runs at the
    output resolution with in·out·k² weights instead of in·out·s²·9: a quarter of the weights
    per ×2 block for the same arithmetic, so the budget buys channels where the pixels are.
    (Depthwise + pointwise ConvNeXt blocks, as HiNeRV's, measured 1.5–2.5× slower per weight
    on one CPU core at 12–24 channels.)
    """

    def __init__(self, in_channels: int, out_channels: int, factor: int, kernel: int, norm: str):
        super().__init__(
            nn.Upsample(scale_factor=factor, mode="bilinear", align_corners=False),
            nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2),
            nn.BatchNorm2d(out_channels) if norm == "batch" else nn.Identity(),
            nn.GELU(),
        )


# ----------------------------------------------------------------------------------------------
# The network


class NeRVI(nn.Module):
    """Maps (B, P) parameters in [-1, 1] to (B, 4, H, W) RGB + mask in [0, 1] (3 channels for NeRV).

    `self.config` is the given config resolved for height × width (stem and factors filled in).
    """

    def __init__(self, config: ModelConfig, height: int, width: int, num_params: int):
        super().__init__()
        if num_params < 1:
            raise ModelError(f"model: needs at least one input parameter, got {num_params}")
        self.config = config.resolved(height, width)
        self.height, self.width, self.num_params = height, width, num_params
        c1, (h0, w0), factors = self.config.c1, self.config.stem, self.config.upscale

        periods = self.config.periods
        if periods is not None and len(periods) != num_params:
            raise ModelError(f"model.periods: {len(periods)} values for {num_params} parameters")
        self.encoding = PositionalEncoding(self.config.pe_levels, self.config.pe_include_input, periods)
        in_features = num_params * self.encoding.features_per_input
        self.grid = None
        if self.config.grid_features:
            sizes = self.config.grid_size
            if sizes is None or len(sizes) != num_params:
                raise ModelError(f"model.grid_size: needs one size per parameter ({num_params}), got {sizes}")
            self.grid = FeatureGrid(sizes, periods or (0.0,) * num_params, self.config.grid_levels,
                                    self.config.grid_features)
            in_features += self.grid.out_features
        self.latents = None
        if self.config.latent_features:
            self.latents = FeatureGrid(self.config.grid_size or (1,) * num_params, periods or (0.0,) * num_params,
                                       self.config.grid_levels, self.config.latent_features * h0 * w0)
        latent_channels = self.config.grid_levels * self.config.latent_features
        stem_cells = c1 * h0 * w0
        self.mlp = nn.Sequential(self._residual_block(in_features, c1, first=True),
                                 self._residual_block(c1, stem_cells, first=False)
                                 if self.config.stem_layer == "residual" else self._layer(c1, stem_cells, False))
        channels = self.config.channels(len(factors))
        if self.config.block == "bilinear":
            blocks = [BilinearBlock(i, o, s, self.config.kernel, self.config.norm)
                      for i, o, s in zip([c1 + latent_channels] + channels[:-1], channels, factors)]
        else:
            blocks = [UpscaleBlock(i, o, s, self.config.norm)
                      for i, o, s in zip([c1 + latent_channels] + channels[:-1], channels, factors)]
        self.upscale = nn.Sequential(*blocks)
        out_channels = 4 if self.config.arch == "nervi" else 3
        self.head = nn.Conv2d(channels[-1], out_channels, kernel_size=1)

    def _layer(self, in_features: int, out_features: int, first: bool) -> nn.Module:
        if self.config.arch == "nervi":
            return SineLayer(in_features, out_features, self.config.omega0, first)
        return GeluLayer(in_features, out_features)

    def _residual_block(self, in_features: int, out_features: int, first: bool) -> ResidualBlock:
        skip = self._layer(in_features, out_features, first) if in_features != out_features else None
        return ResidualBlock(self._layer(in_features, out_features, first),
                             self._layer(out_features, out_features, False), skip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.num_params:
            raise ModelError(f"model: expected input of shape (batch, {self.num_params}), got {tuple(x.shape)}")
        h0, w0 = self.config.stem
        features = self.encoding(x)
        if self.grid is not None:
            features = torch.cat([features, self.grid(x)], dim=-1)
        grid = self.mlp(features).reshape(x.shape[0], self.config.c1, h0, w0)
        if self.latents is not None:
            grid = torch.cat([grid, self.latents(x).reshape(x.shape[0], -1, h0, w0)], dim=1)
        return torch.sigmoid(self.head(self.upscale(grid)))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars (works on the meta device)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------------------------
# Inference


SOFT_EDGES = (0.25, 0.75)  # soft compositing: mask below → background, above → RGB, linear between


def soft_alpha(mask: torch.Tensor) -> torch.Tensor:
    """The opacity of soft compositing: 0 for a mask ≤ 0.25, 1 for ≥ 0.75, linear between.

    A plain mask·RGB blend tints the whole background wherever the mask is not exactly 0; the
    ramp keeps the background exact and still anti-aliases the silhouette (measured on trained
    tornado models: +0.7 to +1.8 dB over the plain blend, and above the hard threshold on 3 of 4).
    """
    low, high = SOFT_EDGES
    return ((mask - low) / (high - low)).clamp(0, 1)


def composite(output: torch.Tensor, background: tuple[int, int, int], soft: bool = False) -> torch.Tensor:
    """RGB (…, 3, H, W) in [0, 1]: predicted RGB where the mask > 0.5, else `background` (0–255);
    `soft` blends them instead by `soft_alpha(mask)` (anti-aliased silhouettes).

    A 3-channel (NeRV) output is returned as is.
    """
    if output.shape[-3] == 3:
        return output
    rgb, mask = output[..., :3, :, :], output[..., 3:4, :, :]
    colour = torch.tensor(background, dtype=output.dtype, device=output.device).view(3, 1, 1) / 255
    if soft:
        return colour + soft_alpha(mask) * (rgb - colour)
    return torch.where(mask > 0.5, rgb, colour)


def to_uint8(rgb: torch.Tensor) -> torch.Tensor:
    """(…, 3, H, W) in [0, 1] → uint8 (…, H, W, 3), the layout of the store, rounded and clamped."""
    return (rgb.float() * 255).round().clamp(0, 255).to(torch.uint8).movedim(-3, -1)
