"""The evaluation's record: summary.json (schema: docs/summary-schema.md), summary.md and
per_image.csv, written from a `Measurement`; `EvalResult` is what a caller gets back."""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ... import __version__, atomic
from ...codec.archive import compression_ratio
from ...data.imaging import write_png
from ...data.store import RenderStore
from ...units import finite_or_none
from .colour import DELTA_E_SCALE
from .metrics import MsSsimPlan, lpips_how_to_enable
from .sheet import sheet_picks, sheet_rows, contact_sheet


SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Headline:
    """What most readers of a summary.json want (the CLI, compress, the run's record, the
    bench), read in one place: each metric's mean over the images (None where undefined or,
    for LPIPS, unavailable) and the times."""

    compression_ratio: float
    psnr: float | None
    foreground_psnr: float | None
    ms_ssim: float | None
    lpips: float | None
    encode_seconds: float | None
    decode_seconds: float
    images_per_second: float

    @classmethod
    def from_json(cls, figures: dict[str, Any]) -> "Headline":
        timing = figures["timing"]
        return cls(figures["compression_ratio"], figures["psnr_db"]["mean"], figures["foreground_psnr_db"]["mean"],
                   figures["ms_ssim"]["mean"], figures["lpips"]["mean"] if figures["lpips"]["available"] else None,
                   timing["encode_seconds"], timing["decode_seconds"], timing["images_per_second"])

    @classmethod
    def read(cls, path: str | os.PathLike) -> "Headline":
        """The headline of the summary.json at `path`."""
        return cls.from_json(json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class EvalResult:
    """Where the evaluation was written and its summary.json content (`figures`)."""

    out_dir: Path
    figures: dict[str, Any]

    @property
    def headline(self) -> Headline:
        return Headline.from_json(self.figures)

    @property
    def psnr(self) -> float | None:
        return self.headline.psnr

    def summary(self) -> str:
        h, f = self.headline, self.figures
        lpips = f"LPIPS {show(h.lpips, '.4f')}" if f["lpips"]["available"] else "LPIPS unavailable"
        return (f"PSNR {show(h.psnr, '.2f')} dB (foreground {show(h.foreground_psnr, '.2f')} dB), "
                f"MS-SSIM {show(h.ms_ssim, '.4f')}"
                f"{'' if f['ms_ssim']['standard'] else ' (reduced scales)'}, {lpips}, decode "
                f"{h.images_per_second:.1f} img/s → {self.out_dir / 'summary.json'}")


def show(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


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
        picks = sheet_picks(per_image["psnr"])
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


def first_few(indices: np.ndarray, shown: int = 5) -> str:
    return ", ".join(map(str, indices[:shown])) + (" …" if len(indices) > shown else "")


def write_report(out_dir: str | os.PathLike, measured: Measurement, figures: dict[str, Any],
                 decoded_at: Callable[[list[int]], np.ndarray], title: str) -> EvalResult:
    """Write contact.png (its images from `decoded_at(store indices)`), per_image.csv,
    summary.md and summary.json (`figures`) into `out_dir`, each atomically."""
    out_dir = Path(out_dir)
    store = measured.store
    rows = sheet_rows(store, {row["label"]: row["index"] for row in figures["contact_sheet_rows"]},
                       measured.per_image["psnr"], decoded_at)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_png(out_dir / "contact.png", contact_sheet(rows, DELTA_E_SCALE, title))
    atomic.write_text(out_dir / "per_image.csv", _per_image_csv(store.param_names, store.params, measured.per_image))
    atomic.write_text(out_dir / "summary.md", _markdown(figures))
    atomic.write_text(out_dir / "summary.json", json.dumps(figures, indent=2, allow_nan=False) + "\n")
    return EvalResult(out_dir, figures)


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
        cells = [show(stats[k], spec) for k in ("mean", "median", "min", "max")]
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
        f"| encode {'(training) ' * ('bits' in f['archive'])}time | {show(timing['encode_seconds'], '.1f')} s |",
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
