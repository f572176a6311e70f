"""NeRVI: parameters → image + mask (and NeRV as a configuration of the same code).

Network (the paper's; where this code departs from it, the README says): per-parameter
positional encoding (with optional feature grids) → two residual MLP blocks (SIREN for NeRVI,
GELU for NeRV) → reshape to a (c1, h0, w0) grid → upscale blocks Conv3×3 → PixelShuffle → norm →
GELU → Conv1×1 head → sigmoid (RGB + mask, or RGB for NeRV).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelError
from .config import ModelConfig
from .layers import (BilinearBlock, FeatureGrid, GeluLayer, PositionalEncoding, ResidualBlock, SineLayer,
                     UpscaleBlock)

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
