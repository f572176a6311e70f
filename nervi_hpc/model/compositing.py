"""The network's output as an image: RGB over the background by the predicted mask (hard, the
paper's threshold, or soft, a ramp), then uint8 in the store's layout."""

from __future__ import annotations

import torch

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
