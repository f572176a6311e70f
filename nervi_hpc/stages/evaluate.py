"""Evaluate an archive against its renders store: quality, size and speed, told honestly.

`evaluate(archive, store, out_dir)` decodes every image of the store and compares it with the
ground truth as 8-bit RGB: PSNR (whole image, and foreground-only where the ground-truth mask is
1, since a white background inflates whole-image PSNR), MS-SSIM (pytorch-msssim; fewer scales for
images too small for five, said so in the summary), and LPIPS (AlexNet) only when torchvision's
ImageNet backbone weights are on this machine (never with random weights). It writes, each
atomically, into `out_dir`: summary.json (schema: docs/summary-schema.md), summary.md,
per_image.csv and contact.png (worst, median and best image: ground truth | decoded | ΔE*uv).
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from pytorch_msssim import ms_ssim as standard_ms_ssim

from .. import __version__, atomic
from ..codec.archive import compression_ratio
from ..data.imaging import write_png
from ..data.store import RenderStore
from ..errors import StoreError
from ..hpc.manifest import ending_warnings
from ..model.loss import psnr as psnr_db
from ..parameters import label, png_pattern
from ..paths import RunPaths
from ..progress import ProgressLog, progress_bar
from .decode.decoder import Decoder

SCHEMA_VERSION = 1
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_WINDOW = 11
ALEXNET_WEIGHTS = "alexnet-owt-7be5be79.pth"   # torchvision's file name: its sha256 starts 7be5be79
ALEXNET_URL = f"https://download.pytorch.org/models/{ALEXNET_WEIGHTS}"
# The contact sheet's ΔE*uv colour scale, fixed so sheets compare across runs: about 1–2 is just
# noticeable; silhouette errors (background vs object, ≫ 20) saturate.
DELTA_E_SCALE = 20.0
METRICS = ("psnr", "foreground_psnr", "foreground_pixels", "ms_ssim", "lpips")  # per image


# ----------------------------------------------------------------------------------------------
# MS-SSIM


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


# ----------------------------------------------------------------------------------------------
# LPIPS


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


# ----------------------------------------------------------------------------------------------
# Colour difference (CIELUV) and its colour map


SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]])
D65_WHITE = SRGB_TO_XYZ.sum(axis=1)  # XYZ of sRGB white: (0.9505, 1, 1.0889)


def srgb_to_luv(rgb: np.ndarray) -> np.ndarray:
    """CIE L*u*v* (float64, …×3) of sRGB uint8 colours (…×3), D65 white."""
    c = rgb.astype(np.float64) / 255
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ SRGB_TO_XYZ.T
    y = xyz[..., 1] / D65_WHITE[1]
    lightness = np.where(y > (6 / 29) ** 3, 116 * np.cbrt(y) - 16, (29 / 3) ** 3 * y)

    def chromaticity(v):  # (u', v') of XYZ values; black takes the white point's (its u*, v* are 0)
        denominator = v[..., 0] + 15 * v[..., 1] + 3 * v[..., 2]
        safe = np.where(denominator > 0, denominator, 1.0)
        white = np.array([4 * D65_WHITE[0], 9 * D65_WHITE[1]]) / (D65_WHITE @ [1, 15, 3])
        uv = np.stack([4 * v[..., 0], 9 * v[..., 1]], axis=-1) / safe[..., None]
        return np.where(denominator[..., None] > 0, uv, white)

    white_uv = chromaticity(D65_WHITE)
    uv = 13 * lightness[..., None] * (chromaticity(xyz) - white_uv)
    return np.concatenate([lightness[..., None], uv], axis=-1)


def delta_e_uv(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel ΔE*uv (Euclidean distance in CIE L*u*v*) between two uint8 RGB images."""
    return np.linalg.norm(srgb_to_luv(a) - srgb_to_luv(b), axis=-1)


# A 5-stop approximation of the perceptually uniform "inferno" map: black → purple → red → yellow.
COLOUR_STOPS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], np.float64)


def colour_map(values: np.ndarray) -> np.ndarray:
    """uint8 RGB (…×3) of values in [0, 1] (clipped)."""
    position = np.clip(values, 0, 1) * (len(COLOUR_STOPS) - 1)
    low = np.minimum(position.astype(np.int64), len(COLOUR_STOPS) - 2)
    t = (position - low)[..., None]
    return np.rint(COLOUR_STOPS[low] * (1 - t) + COLOUR_STOPS[low + 1] * t).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Contact sheet


@dataclass(frozen=True)
class SheetRow:
    label: str
    truth: np.ndarray      # uint8 (H, W, 3)
    decoded: np.ndarray    # uint8 (H, W, 3)
    delta_e: np.ndarray    # float (H, W)


TILE = 192       # small images are enlarged (nearest neighbour) to about this size
MAX_TILE = 384   # large images are reduced to this size
GAP = 8
TEXT = 16        # height of a line of text
SHEET_GREY = (48, 48, 48)


def _font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError):  # Pillow without FreeType: its fixed bitmap font
        return ImageFont.load_default()


def _tile(image: np.ndarray, size: tuple[int, int]) -> Image.Image:
    picture = Image.fromarray(np.ascontiguousarray(image))
    if picture.size == size:
        return picture
    enlarging = size[0] >= picture.width
    return picture.resize(size, Image.Resampling.NEAREST if enlarging else Image.Resampling.BOX)


def contact_sheet(rows: Sequence[SheetRow], vmax: float, title: str) -> np.ndarray:
    """Rows of ground truth | decoded | ΔE*uv (colour-mapped, 0..vmax) with captions, a title
    and a labelled colour bar; RGB uint8. Text is ASCII (the built-in font has no Greek)."""
    h, w = rows[0].truth.shape[:2]
    longest = max(h, w)
    scale = max(1, TILE // longest) if longest <= MAX_TILE else MAX_TILE / longest
    tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    width = 3 * tw + 4 * GAP
    top = GAP + 2 * TEXT + GAP
    height = top + len(rows) * (TEXT + th + GAP) + 2 * TEXT + 14 + GAP
    width = max(width, 420)
    sheet = Image.new("RGB", (width, height), SHEET_GREY)
    draw = ImageDraw.Draw(sheet)
    font = _font()
    draw.text((GAP, GAP), title, fill=(255, 255, 255), font=font)
    for c, header in enumerate(("ground truth", "decoded", "Delta E*uv (CIELUV)")):
        draw.text((GAP + c * (tw + GAP), GAP + TEXT + 2), header, fill=(200, 200, 200), font=font)
    y = top
    for row in rows:
        draw.text((GAP, y), row.label, fill=(255, 255, 255), font=font)
        y += TEXT
        heat = colour_map(row.delta_e / vmax)
        for c, image in enumerate((row.truth, row.decoded, heat)):
            sheet.paste(_tile(image, (tw, th)), (GAP + c * (tw + GAP), y))
        y += th + GAP
    bar_width = width - 2 * GAP
    bar = colour_map(np.broadcast_to(np.linspace(0, 1, bar_width), (14, bar_width)))
    sheet.paste(Image.fromarray(np.ascontiguousarray(bar)), (GAP, y))
    y += 14 + 2
    for fraction in (0, 0.5, 1):
        text = f"{vmax * fraction:g}"
        x = GAP + fraction * (bar_width - 1) - (draw.textlength(text, font=font) * fraction)
        draw.text((x, y), text, fill=(255, 255, 255), font=font)
    caption = f"dE*uv per pixel (CIELUV, D65): >= {vmax:g} saturates, ~1-2 just noticeable"
    draw.text((GAP, y + TEXT), caption, fill=(200, 200, 200), font=font)
    return np.asarray(sheet)


# ----------------------------------------------------------------------------------------------
# Evaluation


@dataclass(frozen=True)
class EvalResult:
    """Where the evaluation was written and its summary.json content (`figures`)."""

    out_dir: Path
    figures: dict[str, Any]

    @property
    def psnr(self) -> float | None:
        return self.figures["psnr_db"]["mean"]

    def summary(self) -> str:
        f = self.figures
        lpips = f"LPIPS {f['lpips']['mean']:.4f}" if f["lpips"]["available"] else "LPIPS unavailable"
        return (f"PSNR {_show(f['psnr_db']['mean'], '.2f')} dB (foreground "
                f"{_show(f['foreground_psnr_db']['mean'], '.2f')} dB), "
                f"MS-SSIM {_show(f['ms_ssim']['mean'], '.4f')}"
                f"{'' if f['ms_ssim']['standard'] else ' (reduced scales)'}, {lpips}, decode "
                f"{f['timing']['images_per_second']:.1f} img/s → {self.out_dir / 'summary.json'}")


def _show(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


class _Lpips:
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


def default_eval_dir(archive: str | os.PathLike) -> Path:
    """The run's eval/ folder for RUN/archive/X.nervi (the run layout), else X-eval/ beside X."""
    archive = Path(archive)
    if archive.parent.name == RunPaths(archive.parent.parent).archive_dir.name:
        return RunPaths(archive.parent.parent).eval_dir
    return archive.with_name(f"{archive.stem}-eval")


def evaluate(archive: str | os.PathLike, store: str | os.PathLike, out_dir: str | os.PathLike, *,
             device: str | torch.device | None = None, batch_size: int | None = None,
             progress: bool = True, lines: ProgressLog | None = None) -> EvalResult:
    """Decode every image of `store` from `archive`, compare, and write the report to `out_dir`
    (`lines`: a progress record of the images measured, for a job's log and `watch`)."""
    archive, out_dir = Path(archive), Path(out_dir)
    decoder = Decoder.open(archive, device=device, batch_size=batch_size)
    with tempfile.TemporaryDirectory(prefix="nervi-truth-") as scratch:
        renders = RenderStore.open(truth_store(store, decoder.meta, Path(scratch), progress))
        return _evaluate(archive, decoder, renders, out_dir, progress, truth=Path(store), lines=lines)


def truth_store(path: str | os.PathLike, meta, scratch: Path, progress: bool) -> Path:
    """The ground truth as a renders store: `path` itself when it is one, else the Cinema
    database (data.csv) or the folder of PNGs named as `decode` names them at `path`, ingested
    into `scratch` on the archive's background (`meta`, as it was trained)."""
    from ..config import CinemaSource, FolderSource
    from ..data.sources import open_source
    from .ingest import ingest

    path = Path(path)
    if not path.is_dir() or (path / "zarr.json").is_file():
        return path  # a store, or nothing: RenderStore.open says which
    background = tuple(meta.background)
    if (path / "data.csv").is_file():
        spec = CinemaSource(kind="cinema", path=str(path), background=background)
    else:
        spec = FolderSource(kind="folder", path=str(path), pattern=png_pattern(meta.names), background=background)
    truth = scratch / "truth.zarr"
    ingest(open_source(spec), truth, workers=1, progress=progress)
    return truth


def _evaluate(archive: Path, decoder: Decoder, renders: RenderStore, out_dir: Path, progress: bool, *,
              truth: Path, lines: ProgressLog | None = None) -> EvalResult:
    meta = decoder.meta
    if renders.param_names != meta.names or (renders.height, renders.width) != (meta.height, meta.width):
        raise StoreError(f"{renders.path}: its images ({renders.width}×{renders.height}, parameters "
                         f"{', '.join(renders.param_names)}) are not what {archive} encodes "
                         f"({meta.width}×{meta.height}, parameters {', '.join(meta.names)})")
    count, params = renders.count, renders.params
    decode_seconds = 0.0

    def decoded_batches(bar, task):
        nonlocal decode_seconds
        for start in range(0, count, decoder.batch_size):
            stop = min(start + decoder.batch_size, count)
            clock = time.perf_counter()
            decoded = decoder.decode(params[start:stop])
            decode_seconds += time.perf_counter() - clock
            yield range(start, stop), decoded
            bar.advance(task, stop - start)
            if lines is not None:
                lines(images=stop, total=count, step="evaluate")

    with progress_bar(progress) as bar:
        measured = measure(renders, decoded_batches(bar, bar.add_task(f"evaluate {archive.name}", total=count)),
                           decoder.device)
    archive_bytes = archive.stat().st_size
    figures = measured.figures(
        archive={"path": str(archive), "bytes": archive_bytes, "bits": meta.bits,
                 "parameters": decoder.info.parameter_count,
                 "bits_per_parameter": decoder.info.bits_per_parameter},
        timing={"encode_seconds": finite_or_none(meta.training.get("seconds")), "decode_seconds": decode_seconds,
                "device": str(decoder.device), "precision": decoder.precision, "batch_size": decoder.batch_size})
    figures["store"]["path"] = str(truth)  # what the user gave, not the scratch store it became
    trained = meta.training
    figures["warnings"] = ending_warnings(trained.get("epochs"), trained.get("epochs_planned"),
                                          trained.get("stopped_early"), figures["psnr_db"]["mean"])
    title = (f"{archive.name}: {count} images {meta.width}x{meta.height}, {meta.bits}-bit, "
             f"CR {figures['compression_ratio']:.1f}, "
             f"mean PSNR {_show(figures['psnr_db']['mean'], '.2f')} dB")
    return write_report(out_dir, measured, figures, lambda indices: decoder.decode(params[indices]), title)


@dataclass(frozen=True)
class Measurement:
    """Per-image metrics (METRICS → float64 (N,)) of a store's images against decoded ones, and
    how MS-SSIM and LPIPS were computed."""

    store: RenderStore
    per_image: dict[str, np.ndarray]
    plan: MsSsimPlan
    lpips_reason: str | None   # None: LPIPS was computed for every image

    def figures(self, *, archive: dict[str, Any], timing: dict[str, Any]) -> dict[str, Any]:
        """summary.json (docs/summary-schema.md) for a collection encoded in `archive["bytes"]`
        bytes; `timing` gives encode_seconds, decode_seconds, device, precision, batch_size (and
        optionally more keys); images_per_second is added."""
        store, per_image, plan = self.store, self.per_image, self.plan
        count = store.count
        timing = {"encode_seconds": timing["encode_seconds"], "decode_seconds": timing["decode_seconds"],
                  "images_per_second": count / max(timing["decode_seconds"], 1e-9), **timing}
        picks = _sheet_picks(per_image["psnr"])
        available = self.lpips_reason is None
        return {
            "schema_version": SCHEMA_VERSION,
            "producer": f"nervi-hpc {__version__}",
            "archive": archive,
            "store": {"path": str(store.path), "images": count, "height": store.height, "width": store.width,
                      "raw_bytes": count * store.height * store.width * 3},
            "compression_ratio": compression_ratio(count, store.height, store.width, archive["bytes"]),
            "psnr_db": _stats(per_image["psnr"]),
            "foreground_psnr_db": _stats(per_image["foreground_psnr"]),
            "ms_ssim": {**_stats(per_image["ms_ssim"]), "standard": plan.standard, "scales": plan.scales,
                        "window": plan.window, "weights": list(plan.weights), "note": plan.note},
            "lpips": {**_stats(per_image["lpips"]), "available": available, "net": "alex",
                      "reason": self.lpips_reason, "how_to_enable": None if available else lpips_how_to_enable()},
            "timing": timing,
            "contact_sheet_rows": [{"label": name, "index": i, "psnr_db": finite_or_none(per_image["psnr"][i]),
                                    "identical": bool(np.isinf(per_image["psnr"][i]))} for name, i in picks.items()],
            "files": {"summary_md": "summary.md", "per_image": "per_image.csv", "contact_sheet": "contact.png"},
        }


def measure(store: RenderStore, batches: Iterable[tuple[Sequence[int], np.ndarray]],
            device: str | torch.device = "cpu") -> Measurement:
    """Compare decoded images with the ground truth of `store`: `batches` yields (store indices,
    decoded uint8 (b, H, W, 3)) in any order; together they must cover every image once."""
    device = torch.device(device)
    plan = ms_ssim_plan(store.height, store.width)
    lpips = _Lpips(device)
    per_image = {key: np.full(store.count, np.nan) for key in METRICS}
    seen = np.zeros(store.count, bool)
    for indices, decoded in batches:
        indices = np.asarray(indices, dtype=np.int64)
        truth, masks = store.read(indices.tolist())
        for key, values in _batch_metrics(truth, masks, decoded, plan, lpips, device).items():
            per_image[key][indices] = values
        seen[indices] = True
    if not seen.all():
        raise ValueError(f"{store.path}: images {_first(np.flatnonzero(~seen))} were not decoded")
    if lpips.model is None:  # also when it failed after some batches: all or nothing
        per_image["lpips"][:] = np.nan
    return Measurement(store, per_image, plan, lpips.reason if lpips.model is None else None)


def _first(indices: np.ndarray, shown: int = 5) -> str:
    return ", ".join(map(str, indices[:shown])) + (" …" if len(indices) > shown else "")


def write_report(out_dir: str | os.PathLike, measured: Measurement, figures: dict[str, Any],
                 decoded_at: Callable[[list[int]], np.ndarray], title: str) -> EvalResult:
    """Write contact.png (its images from `decoded_at(store indices)`), per_image.csv,
    summary.md and summary.json (`figures`) into `out_dir`, each atomically."""
    out_dir = Path(out_dir)
    store = measured.store
    rows = _sheet_rows(store, {row["label"]: row["index"] for row in figures["contact_sheet_rows"]},
                       measured.per_image["psnr"], decoded_at)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_png(out_dir / "contact.png", contact_sheet(rows, DELTA_E_SCALE, title))
    atomic.write_text(out_dir / "per_image.csv", _per_image_csv(store.param_names, store.params, measured.per_image))
    atomic.write_text(out_dir / "summary.md", _markdown(figures))
    atomic.write_text(out_dir / "summary.json", json.dumps(figures, indent=2, allow_nan=False) + "\n")
    return EvalResult(out_dir, figures)


def _batch_metrics(truth: np.ndarray, masks: np.ndarray, decoded: np.ndarray, plan: MsSsimPlan,
                   lpips: _Lpips, device: torch.device) -> dict[str, np.ndarray]:
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


def _sheet_picks(psnr: np.ndarray) -> dict[str, int]:
    """Indices of the worst, median and best image by PSNR (identical images rank best)."""
    order = np.argsort(psnr, kind="stable")
    return {"worst": int(order[0]), "median": int(order[(len(order) - 1) // 2]), "best": int(order[-1])}


def _sheet_rows(renders: RenderStore, picks: dict[str, int], psnr: np.ndarray,
                decoded_at: Callable[[list[int]], np.ndarray]) -> list[SheetRow]:
    """Contact-sheet rows in the order of `picks` (worst, median, best), one per distinct image."""
    labels: dict[int, list[str]] = {}
    for name, index in picks.items():
        labels.setdefault(index, []).append(name)
    indices = list(labels)
    truth, _ = renders.read(indices)
    decoded = decoded_at(indices)
    rows = []
    for k, index in enumerate(indices):
        delta = delta_e_uv(truth[k], decoded[k])
        where = label(renders.param_names, renders.params[index])
        rows.append(SheetRow(f"{'/'.join(labels[index])}: #{index} {where}  "
                             f"PSNR {_psnr_text(psnr[index])}, mean dE {delta.mean():.2f}",
                             truth[k], decoded[k], delta))
    return rows


def _psnr_text(value: float) -> str:
    return "inf (identical)" if np.isinf(value) else f"{value:.2f} dB"


def finite_or_none(value) -> float | None:
    """`value` as a float when it is a finite number, else None (JSON has no inf or NaN)."""
    return float(value) if isinstance(value, (int, float, np.floating)) and math.isfinite(value) else None


def _stats(values: np.ndarray) -> dict[str, Any]:
    """Mean/median/min/max over the finite values; `infinite` counts +inf (identical images,
    left out of the statistics), `undefined` counts NaN (e.g. no foreground pixel)."""
    finite = values[np.isfinite(values)]
    stat = (lambda f: float(f(finite))) if finite.size else (lambda f: None)
    return {"mean": stat(np.mean), "median": stat(np.median), "min": stat(np.min), "max": stat(np.max),
            "count": int(finite.size), "infinite": int(np.isinf(values).sum()),
            "undefined": int(np.isnan(values).sum())}


def _per_image_csv(names, params, per_image) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["index", *names, "psnr_db", "foreground_psnr_db", "foreground_pixels", "ms_ssim", "lpips"])

    def cell(v: float) -> str:
        return "" if np.isnan(v) else ("inf" if np.isinf(v) else repr(float(v)))

    for i in range(len(params)):
        writer.writerow([i, *(repr(float(v)) for v in params[i]), cell(per_image["psnr"][i]),
                         cell(per_image["foreground_psnr"][i]), int(per_image["foreground_pixels"][i]),
                         cell(per_image["ms_ssim"][i]), cell(per_image["lpips"][i])])
    return out.getvalue()


def archive_name(archive: dict[str, Any]) -> str:
    """The file name of a nervi archive, or `codec setting` of a baseline codec's encoding."""
    if archive.get("path") is None:
        return f"{archive['codec']} {archive['setting']}"
    return Path(archive["path"]).name


def _archive_text(a: dict[str, Any]) -> str:
    if "bits" in a:
        return (f"{a['bytes']:,} bytes, {a['bits']}-bit, {a['bits_per_parameter']:.2f} bits/parameter "
                f"({a['parameters']:,} parameters)")
    options = ", ".join(f"{k} {v}" for k, v in a["options"].items())
    return f"{a['bytes']:,} bytes, {a['encoder']} ({options})"


def _markdown(f: dict[str, Any]) -> str:
    def row(label, stats, spec):
        cells = [_show(stats[k], spec) for k in ("mean", "median", "min", "max")]
        extra = []
        if stats["infinite"]:
            extra.append(f"{stats['infinite']} identical (∞) not in the statistics")
        if stats["undefined"]:
            extra.append(f"{stats['undefined']} undefined")
        return f"| {label} | {' | '.join(cells)} | {'; '.join(extra)} |"

    lpips = f["lpips"]
    timing = f["timing"]
    lines = [
        f"# Evaluation of {archive_name(f['archive'])}",
        "",
        f"{f['store']['images']} images of {f['store']['width']}×{f['store']['height']} from "
        f"`{f['store']['path']}`, decoded on {timing['device']} ({timing['precision']}).",
        "",
        *(f"**Warning:** {warning}.\n" for warning in f.get("warnings", [])),
        "| metric | mean | median | min | max | notes |",
        "|---|---|---|---|---|---|",
        row("PSNR (dB, RGB 8-bit)", f["psnr_db"], ".2f"),
        row("foreground PSNR (dB)", f["foreground_psnr_db"], ".2f"),
        row("MS-SSIM" + ("" if f["ms_ssim"]["standard"] else f" ({f['ms_ssim']['scales']} scales)"),
            f["ms_ssim"], ".4f"),
        row("LPIPS (AlexNet)", lpips, ".4f") if lpips["available"] else
        "| LPIPS (AlexNet) | unavailable | | | | see below |",
        "",
        "| size and speed | |",
        "|---|---|",
        f"| archive | {_archive_text(f['archive'])} |",
        f"| compression ratio (N·H·W·3 / archive) | {f['compression_ratio']:.1f} |",
        f"| encode {'(training) ' * ('bits' in f['archive'])}time | {_show(timing['encode_seconds'], '.1f')} s |",
        f"| decode time | {timing['decode_seconds']:.2f} s, {timing['images_per_second']:.1f} img/s "
        f"(batch {timing['batch_size']}) |",
        "",
    ]
    if f["ms_ssim"]["note"]:
        lines += [f"MS-SSIM: {f['ms_ssim']['note']}.", ""]
    if not lpips["available"]:
        lines += [f"LPIPS unavailable: {lpips['reason']}. To enable it, {lpips['how_to_enable']}.", ""]
    lines += ["Contact sheet `contact.png`: worst, median and best image by PSNR; ground truth | decoded | "
              "ΔE*uv in CIELUV.", ""]
    return "\n".join(lines)
