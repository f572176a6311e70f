"""The per-image metrics: PSNR (whole and foreground), MS-SSIM (with fewer scales for small images,
said so) and LPIPS (AlexNet, only with the real ImageNet weights on this machine)."""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pytorch_msssim import ms_ssim as standard_ms_ssim

from ... import atomic
from ...model.loss import psnr as psnr_db


METRICS = ("psnr", "foreground_psnr", "foreground_pixels", "ms_ssim", "lpips")  # per image
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_WINDOW = 11
ALEXNET_WEIGHTS = "alexnet-owt-7be5be79.pth"   # torchvision's file name: its sha256 starts 7be5be79
ALEXNET_URL = f"https://download.pytorch.org/models/{ALEXNET_WEIGHTS}"


@dataclass(frozen=True)
class MsSsimPlan:
    """How MS-SSIM is computed for one image size: the standard 5 scales, window 11, where they
    fit; otherwise fewer scales (their standard weights renormalised to sum 1) and, below 11
    pixels, a smaller window. `note` says what departs from the standard, or is None."""

    scales: int
    window: int
    weights: tuple[float, ...]
    note: str | None

    @property
    def standard(self) -> bool:
        return self.note is None


def ms_ssim_plan(height: int, width: int) -> MsSsimPlan:
    side = min(height, width)
    window = min(MS_SSIM_WINDOW, side if side % 2 else side - 1)
    scales = max(s for s in range(1, 6) if s == 1 or side > (window - 1) * 2 ** (s - 1))
    if scales == 5 and window == MS_SSIM_WINDOW:
        return MsSsimPlan(5, window, MS_SSIM_WEIGHTS, None)
    total = sum(MS_SSIM_WEIGHTS[:scales])
    weights = tuple(w / total for w in MS_SSIM_WEIGHTS[:scales])
    note = (f"{height}×{width} images are too small for the standard 5-scale MS-SSIM (it needs a side "
            f"> {(MS_SSIM_WINDOW - 1) * 16} px): computed with {_scales(scales)}, "
            f"window {window}, the first {scales} standard weights renormalised to sum 1; "
            f"not comparable with 5-scale figures")
    return MsSsimPlan(scales, window, weights, note)


def _scales(count: int) -> str:
    return f"{count} scale{'s' * (count != 1)}"


def ms_ssim(x: torch.Tensor, y: torch.Tensor, plan: MsSsimPlan) -> torch.Tensor:
    """Per-image MS-SSIM of (n, 3, H, W) images in 0..255 (float): pytorch-msssim's ms_ssim for
    the standard plan; for a reduced plan the same computation over `plan.scales` scales, built
    on the package's own per-scale SSIM."""
    if plan.standard:
        return standard_ms_ssim(x, y, data_range=255, size_average=False)
    ssim_module = importlib.import_module("pytorch_msssim.ssim")  # the package re-exports ssim()
    win = ssim_module._fspecial_gauss_1d(plan.window, 1.5).repeat([x.shape[1], 1, 1, 1])
    factors = []
    for scale in range(plan.scales):
        ssim_per_channel, cs = ssim_module._ssim(x, y, data_range=255, win=win, size_average=False)
        if scale < plan.scales - 1:
            factors.append(torch.relu(cs))
            padding = [s % 2 for s in x.shape[2:]]
            x = torch.nn.functional.avg_pool2d(x, kernel_size=2, padding=padding)
            y = torch.nn.functional.avg_pool2d(y, kernel_size=2, padding=padding)
    stacked = torch.stack(factors + [torch.relu(ssim_per_channel)])
    weights = stacked.new_tensor(plan.weights).view(-1, 1, 1)
    return torch.prod(stacked ** weights, dim=0).mean(dim=1)


def alexnet_weights_path() -> Path:
    """Where torchvision looks for the AlexNet backbone before downloading it."""
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_WEIGHTS


def lpips_how_to_enable() -> str:
    return (f"put torchvision's {ALEXNET_WEIGHTS} ({ALEXNET_URL}) in $TORCH_HOME/hub/checkpoints/ "
            f"(here: {alexnet_weights_path().parent})")


def load_lpips(device: torch.device) -> tuple[torch.nn.Module | None, str | None]:
    """(LPIPS-AlexNet model, None), or (None, why not). The backbone must be torchvision's ImageNet
    file, checked by its sha256 prefix; nothing is downloaded and no random backbone is used."""
    path = alexnet_weights_path()
    if not path.is_file():
        return None, (f"the AlexNet backbone weights are not on this machine ({path} is missing) and "
                      f"are not downloaded during evaluation")
    digest = atomic.file_sha256(path)
    expected = ALEXNET_WEIGHTS.rsplit("-", 1)[1].split(".")[0]
    if not digest.startswith(expected):
        return None, (f"{path} is not torchvision's AlexNet ImageNet weights "
                      f"(sha256 {digest[:8]}…, expected {expected}…)")
    try:
        import lpips

        with warnings.catch_warnings():  # torchvision's deprecated `pretrained=` argument
            warnings.simplefilter("ignore")
            model = lpips.LPIPS(net="alex", verbose=False)
    except Exception as e:  # any failure to build the metric is reported, not fatal
        return None, f"LPIPS could not be built from {path} ({type(e).__name__}: {e})"
    return model.to(device).eval(), None


class Lpips:
    """LPIPS per image when available; remembers why not otherwise."""

    def __init__(self, device: torch.device):
        self.model, self.reason = load_lpips(device)

    def score(self, truth: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor | None:
        if self.model is None:
            return None
        try:
            with torch.inference_mode():
                return self.model(truth / 255, decoded / 255, normalize=True).flatten()
        except RuntimeError as e:  # e.g. images smaller than AlexNet's receptive field
            self.model, self.reason = None, f"LPIPS failed on {tuple(truth.shape[2:])} images ({e})"
            return None


def batch_metrics(truth: np.ndarray, masks: np.ndarray, decoded: np.ndarray, plan: MsSsimPlan,
                   lpips: Lpips, device: torch.device) -> dict[str, np.ndarray]:
    """Per-image metrics of a batch (uint8 images (b, H, W, 3), masks (b, H, W)), computed on `device`."""
    x = torch.from_numpy(truth).to(device).permute(0, 3, 1, 2).double()
    y = torch.from_numpy(decoded).to(device).permute(0, 3, 1, 2).double()
    inside = torch.from_numpy(masks).to(device).bool()
    pixels = inside.flatten(1).sum(dim=1)
    squared = ((x - y) / 255).pow(2).sum(dim=1)
    mse = (squared * inside).flatten(1).sum(dim=1) / (3 * pixels).clamp_min(1)
    foreground = torch.where(pixels > 0, -10 * torch.log10(mse), torch.full_like(mse, float("nan")))
    scores = lpips.score(x.float(), y.float())
    values = {"psnr": psnr_db(x / 255, y / 255, per_image=True), "foreground_psnr": foreground,
              "foreground_pixels": pixels, "ms_ssim": ms_ssim(x.float(), y.float(), plan),
              "lpips": scores if scores is not None else torch.full_like(mse, float("nan"))}
    return {key: value.double().cpu().numpy() for key, value in values.items()}
