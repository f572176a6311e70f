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

import os
import tempfile
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from ...data.store import RenderStore
from ...errors import StoreError
from ...parameters import png_pattern
from ...paths import RunPaths
from ...progress import ProgressLog, progress_bar
from ...units import finite_or_none
from ..decode.decoder import Decoder
from ..figures import ending_warnings
from .metrics import METRICS, Lpips, batch_metrics, ms_ssim_plan
from .summary import EvalResult, Measurement, first_few, show, write_report


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
    from ...config import CinemaSource, FolderSource
    from ...data.sources import open_source
    from ..ingest.run import ingest

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
             f"mean PSNR {show(figures['psnr_db']['mean'], '.2f')} dB")
    return write_report(out_dir, measured, figures, lambda indices: decoder.decode(params[indices]), title)


def measure(store: RenderStore, batches: Iterable[tuple[Sequence[int], np.ndarray]],
            device: str | torch.device = "cpu") -> Measurement:
    """Compare decoded images with the ground truth of `store`: `batches` yields (store indices,
    decoded uint8 (b, H, W, 3)) in any order; together they must cover every image once."""
    device = torch.device(device)
    plan = ms_ssim_plan(store.height, store.width)
    lpips = Lpips(device)
    per_image = {key: np.full(store.count, np.nan) for key in METRICS}
    seen = np.zeros(store.count, bool)
    for indices, decoded in batches:
        indices = np.asarray(indices, dtype=np.int64)
        truth, masks = store.read(indices.tolist())
        for key, values in batch_metrics(truth, masks, decoded, plan, lpips, device).items():
            per_image[key][indices] = values
        seen[indices] = True
    if not seen.all():
        raise ValueError(f"{store.path}: images {first_few(np.flatnonzero(~seen))} were not decoded")
    if lpips.model is None:  # also when it failed after some batches: all or nothing
        per_image["lpips"][:] = np.nan
    return Measurement(store, per_image, plan, lpips.reason if lpips.model is None else None)
