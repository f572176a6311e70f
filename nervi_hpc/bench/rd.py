"""Rate–distortion maths and plots: quality at a target compression ratio, Bjøntegaard BD-rate,
and PSNR / MS-SSIM versus CR plots (matplotlib, Agg).

A method's curve is its points sorted by CR, joined by straight lines in log(CR). Rate is 1/CR
(bytes per raw byte), so "fewer bytes" and "higher CR" are the same thing.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from .. import atomic
from ..stages.evaluate.summary import Headline

TARGET_CRS = (100, 300, 700, 1000)
TICKS = (1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 30000)


@dataclass(frozen=True)
class Point:
    """One measured encoding of a collection (a summary.json reduced to what the benchmark uses)."""

    method: str
    setting: str
    kind: str                      # "nervi" or "codec"
    cr: float
    psnr: float | None
    foreground_psnr: float | None
    ms_ssim: float | None
    encode_seconds: float | None
    decode_seconds: float | None

    @classmethod
    def from_summary(cls, method: str, setting: str, kind: str, h: Headline) -> "Point":
        return cls(method, setting, kind, h.compression_ratio, h.psnr, h.foreground_psnr, h.ms_ssim,
                   h.encode_seconds, h.decode_seconds)


def _curve(pairs: Sequence[tuple[float, float | None]]) -> list[tuple[float, float]]:
    """(CR, quality) pairs with a quality, sorted by CR."""
    return sorted((float(cr), float(q)) for cr, q in pairs if q is not None and cr > 0)


def at_cr(pairs: Sequence[tuple[float, float | None]], target: float) -> float | None:
    """Quality at CR `target`, linear in log(CR) between the points on either side; None when
    `target` lies outside the points' CR range (no extrapolation)."""
    curve = _curve(pairs)
    exact = [q for cr, q in curve if cr == target]
    if exact:
        return max(exact)
    for (cr0, q0), (cr1, q1) in zip(curve, curve[1:]):
        if cr0 < target < cr1:
            t = (math.log(target) - math.log(cr0)) / (math.log(cr1) - math.log(cr0))
            return q0 + t * (q1 - q0)
    return None


def bd_rate(a: Sequence[tuple[float, float | None]], b: Sequence[tuple[float, float | None]]) -> float | None:
    """Bjøntegaard delta rate (VCEG-M33) of curve `a` against `b`, in percent: the mean change
    in rate (1/CR) that `a` needs for the same PSNR, over the PSNR range both curves cover.
    log10(rate) is fitted as a polynomial in PSNR, cubic as in VCEG-M33 (lower degree for fewer
    than four points), and integrated over the overlap. Negative: `a` needs fewer bytes. None
    when a curve has fewer than two points or the PSNR ranges do not overlap."""
    fits = []
    for pairs in (a, b):
        curve = _curve(pairs)
        if len(curve) < 2:
            return None
        cr, quality = np.array(curve).T
        fits.append((np.polyfit(quality, np.log10(1 / cr), min(3, len(curve) - 1)), quality.min(), quality.max()))
    low, high = max(fits[0][1], fits[1][1]), min(fits[0][2], fits[1][2])
    if not high > low:
        return None
    integrals = [np.polyval(np.polyint(coefficients), high) - np.polyval(np.polyint(coefficients), low)
                 for coefficients, _, _ in fits]
    return float((10 ** ((integrals[0] - integrals[1]) / (high - low)) - 1) * 100)


# ----------------------------------------------------------------------------------------------
# Plots


def ms_ssim_db(value: float | None) -> float | None:
    """MS-SSIM as −10·log10(1 − MS-SSIM): spreads values near 1 apart (None for 1 or None)."""
    return None if value is None or value >= 1 else -10 * math.log10(1 - value)


PANELS = {
    "psnr": [("psnr", "PSNR (dB), whole image"), ("foreground_psnr", "PSNR (dB), foreground only")],
    "ms_ssim": [("ms_ssim", "MS-SSIM (dB: −10·log10(1 − MS-SSIM))")],
}


def plot(points: Sequence[Point], path: str | os.PathLike, metric: str, title: str) -> None:
    """Write a PNG of `metric` ("psnr": whole-image and foreground PSNR side by side; "ms_ssim")
    against CR (log axis), one line per method: nervi-hpc variants solid, codecs dashed."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    panels = PANELS[metric]
    figure, axes = pyplot.subplots(1, len(panels), figsize=(7.5 * len(panels), 5.5), squeeze=False)
    methods = list(dict.fromkeys(p.method for p in points))
    colours = pyplot.get_cmap("tab10").colors
    for axis, (field, label) in zip(axes[0], panels):
        for k, method in enumerate(methods):
            mine = sorted((p for p in points if p.method == method), key=lambda p: p.cr)
            value = (lambda p: ms_ssim_db(p.ms_ssim)) if field == "ms_ssim" else (lambda p: getattr(p, field))
            xy = [(p.cr, value(p)) for p in mine if value(p) is not None]
            if not xy:
                continue
            nervi = mine[0].kind == "nervi"
            axis.plot(*zip(*xy), marker="o" if nervi else ".", linestyle="-" if nervi else "--",
                      linewidth=2.2 if nervi else 1.2, color=colours[k % len(colours)], label=method)
        crs = [p.cr for p in points]
        for target in TARGET_CRS:
            if min(crs) <= target <= max(crs):
                axis.axvline(target, color="0.8", linewidth=0.8, zorder=0)
        axis.set_xscale("log")
        low, high = axis.get_xlim()
        axis.set_xticks([t for t in TICKS if low <= t <= high])
        axis.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_xlabel("compression ratio (N·H·W·3 / bytes), log scale")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.25)
    axes[0][-1].legend(fontsize=8, loc="best")
    figure.suptitle(title)
    figure.tight_layout()
    with atomic.atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    pyplot.close(figure)


@dataclass(frozen=True)
class TimePoint:
    """The archive of one training snapshot: its training time and quality."""

    run: str                # the nervi method and setting, e.g. "default cr300"
    minutes: float          # training wall-clock minutes
    cpu_minutes: float      # the training process's CPU minutes
    epochs: int
    cr: float
    psnr: float | None
    foreground_psnr: float | None


def plot_time(curves: Mapping[str, Sequence[TimePoint]], codec_lines: Mapping[str, Mapping[str, float]],
              path: str | os.PathLike, title: str) -> None:
    """PSNR of each run's snapshot archives against the training process's CPU minutes (log
    axis: fair between runs that shared a machine), and each codec's PSNR at that run's CR as a
    dotted line across (`codec_lines[run][codec]`)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    figure, axis = pyplot.subplots(figsize=(8.5, 5.5))
    colours = pyplot.get_cmap("tab10").colors
    drawn: list[tuple[str, float]] = []  # runs at about the same CR share one line per codec
    for k, (run, points) in enumerate(curves.items()):
        colour = colours[k % len(colours)]
        xy = [(p.cpu_minutes, p.psnr) for p in sorted(points, key=lambda p: p.minutes) if p.psnr is not None]
        if xy:
            cr = points[-1].cr
            axis.plot(*zip(*xy), marker="o", linewidth=2.2, color=colour, label=f"{run} (CR {cr:.0f})")
        for j, (codec, value) in enumerate(codec_lines.get(run, {}).items()):
            if any(c == codec and abs(v - value) < 0.2 for c, v in drawn):
                continue
            drawn.append((codec, value))
            axis.axhline(value, color=colour, linestyle=(0, (1, 1 + j)), linewidth=1.2)
            axis.annotate(f"{codec} @ CR {points[-1].cr:.0f}: {value:.1f} dB", (0.01, value),
                          xycoords=("axes fraction", "data"), fontsize=7, color=colour, va="bottom")
    axis.set_xscale("log")
    axis.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    axis.xaxis.set_minor_formatter(NullFormatter())
    spent = [p.cpu_minutes for ps in curves.values() for p in ps] or [1.0]
    axis.set_xticks([t for t in (0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
                     if min(spent) / 2 <= t <= max(spent) * 2])
    axis.set_xlabel("training CPU minutes (log scale)")
    axis.set_ylabel("PSNR of the archive (dB, whole image)")
    axis.grid(True, which="both", alpha=0.25)
    axis.legend(fontsize=8, loc="lower right")
    figure.suptitle(title)
    figure.tight_layout()
    with atomic.atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    pyplot.close(figure)
