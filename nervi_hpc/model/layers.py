"""The network's layers: positional encoding, feature grids, SIREN and GELU layers, residual
blocks, and the two upscale blocks (Conv → PixelShuffle, or bilinear → Conv)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from .config import MAX_GRID_CELLS, MAX_GRID_DIMS

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
        # (features, nodes): archives of format 1 quantized per first axis, so each feature had
        # its own scale, not each node; the layout stays so that those archives still load
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
