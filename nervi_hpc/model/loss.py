"""Training losses (NeRVI and NeRV) and PSNR.

All inputs are (B, C, H, W) in [0, 1]; losses are computed in float32 whatever the output dtype
(e.g. bf16 under autocast).
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F
from pytorch_msssim import ssim as _ssim

from .compositing import composite

L1_WEIGHT = 0.7
SSIM_WEIGHT = 0.3
MAX_SSIM_WINDOW = 11


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean SSIM (data range 1) with the Gaussian window shrunk to fit small images (odd, ≤ 11)."""
    window = min(MAX_SSIM_WINDOW, x.shape[-2], x.shape[-1])
    if window % 2 == 0:
        window -= 1
    return _ssim(x, y, data_range=1.0, win_size=window)


def nervi_loss(output: torch.Tensor, rgb: torch.Tensor, mask: torch.Tensor, mask_loss: str = "l1",
               ssim_weight: float = SSIM_WEIGHT, composite_weight: float = 0.0, mask_weight: float = 1.0,
               background: tuple[int, int, int] = (255, 255, 255)) -> torch.Tensor:
    """0.7·(mean|m̂ − m| + Σ|m·(ŷ − y)| / Σm) + 0.3·(1 − SSIM(ŷ, y)): the paper's loss, by default.

    With mask_loss="bce" the mask term is the binary cross-entropy instead of the paper's L1:
    L1's gradient through the sigmoid vanishes once the mask saturates at "all background",
    which on small foregrounds can stall the mask for good; BCE's gradient does not.
    `ssim_weight` replaces the 0.3 (0 skips SSIM, ≈ 45 % of a CPU step); `composite_weight` adds
    that times the mean squared error of the soft composite (nervi_hpc.model.compositing.composite) against
    the whole image y: what PSNR measures, silhouettes included. `mask_weight` scales the mask
    term (a DVR mask is the volume's box, nearly invisible in the image; 0.1 there gained within
    one run's spread and cost mask accuracy, docs/benchmarks.md).

    output (B, 4, H, W) = RGB ŷ + mask m̂; rgb (B, 3, H, W); mask (B, 1, H, W) in {0, 1}.
    The masked term sums over the three channels and divides by the number of masked pixels of
    each image (0 for an image with none), then averages over the batch: every term is a mean of
    per-image losses, so a global batch split over DDP ranks gives the same gradient as one
    process (the paper trains with one image per batch, where both readings agree).
    """
    output, rgb, mask = output.float(), rgb.float(), mask.float()
    predicted_rgb, predicted_mask = output[:, :3], output[:, 3:4]
    if mask_loss == "bce":
        mask_l1 = F.binary_cross_entropy(predicted_mask.clamp(1e-6, 1 - 1e-6), mask)
    else:
        mask_l1 = (predicted_mask - mask).abs().mean()
    per_image = (mask * (predicted_rgb - rgb)).abs().flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1)
    loss = L1_WEIGHT * (mask_weight * mask_l1 + per_image.mean())
    if ssim_weight:
        loss = loss + ssim_weight * (1 - ssim(predicted_rgb, rgb))
    if composite_weight:
        loss = loss + composite_weight * (composite(output, background, soft=True) - rgb).pow(2).mean()
    return loss


def nerv_loss(output: torch.Tensor, rgb: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """0.7·mean|ŷ − y| + 0.3·(1 − SSIM(ŷ, y)) on the whole image (`mask` is ignored; it is
    accepted so that both losses are called alike)."""
    output, rgb = output.float(), rgb.float()
    return L1_WEIGHT * (output - rgb).abs().mean() + SSIM_WEIGHT * (1 - ssim(output, rgb))


LOSSES: dict[str, Callable[..., torch.Tensor]] = {"nervi": nervi_loss, "nerv": nerv_loss}


def loss_for(arch: str, mask_loss: str = "l1", **weights) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss of a ModelConfig.arch, called as loss(output, rgb, mask); `weights` are
    nervi_loss's ssim_weight, composite_weight, mask_weight and background."""
    return functools.partial(nervi_loss, mask_loss=mask_loss, **weights) if arch == "nervi" else LOSSES[arch]


def psnr(a: torch.Tensor, b: torch.Tensor, per_image: bool = False) -> torch.Tensor:
    """PSNR in dB (float64) of images (…, C, H, W) in [0, 1]: the mean over images, or with
    `per_image` one value per image, shape (…). Identical images give +inf."""
    mse = (a.double() - b.double()).pow(2).flatten(-3).mean(-1)
    values = 10 * torch.log10(1 / mse)
    return values if per_image else values.mean()
