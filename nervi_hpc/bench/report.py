"""The bench's report: results.md tables (quality at target CRs, BD-rates, the raw points) and
the PSNR-against-time table."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from . import rd
from .spec import Task


NEAR = 0.05   # a point within 5 % of a target CR stands for it when the target lies just outside a curve


def near_cr(pairs: list[tuple[float, float | None]], target: float) -> dict[str, Any] | None:
    """{"value", "cr", "nearest"}: the quality at `target` interpolated along the curve, or,
    when `target` lies outside it but within NEAR of its nearest point, that point's value
    (nearest true); None otherwise."""
    value = rd.at_cr(pairs, target)
    if value is not None:
        return {"value": value, "cr": target, "nearest": False}
    known = [(cr, q) for cr, q in pairs if q is not None]
    if not known:
        return None
    cr, q = min(known, key=lambda point: abs(math.log(point[0] / target)))
    if abs(cr / target - 1) <= NEAR:
        return {"value": q, "cr": cr, "nearest": True}
    return None


def cell(value: float | None, spec: str = ".2f") -> str:
    return "—" if value is None else format(value, spec)


def _near_cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "—"
    return f"{entry['value']:.2f}" + (f" (at {entry['cr']:.0f})" if entry["nearest"] else "")


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:+.1f} %"


def markdown(spec_path: Path, store: dict[str, Any], points: list[rd.Point], table: dict, bd: dict,
             missing: list[Task]) -> str:
    methods = list(table)
    kinds = {p.method: p.kind for p in points}
    targets = [str(t) for t in rd.TARGET_CRS]
    lines = [f"# Rate–distortion benchmark: {spec_path.name}", "",
             f"{store['images']} images of {store['width']}×{store['height']} (`{store['path']}`). "
             f"CR = N·H·W·3 / bytes. Values at a CR are interpolated linearly in log CR between a "
             f"method's two points around it; where the CR lies just outside a method's points, the "
             f"nearest point within {NEAR:.0%} stands for it (its CR in brackets); — : out of reach.", ""]
    for key, name in (("psnr", "PSNR (dB, whole image)"), ("foreground_psnr", "Foreground PSNR (dB)")):
        lines += [f"## {name} at CR ≈ {' / '.join(targets)}", "",
                  "| method | kind | " + " | ".join(f"CR {t}" for t in targets) + " |",
                  "|---|---|" + "---|" * len(targets)]
        lines += [f"| {m} | {kinds[m]} | " + " | ".join(_near_cell(table[m][t][key]) for t in targets) + " |"
                  for m in methods]
        lines.append("")
    if any(bd.values()):  # nervi methods and codecs both measured
        codecs = list(next(iter(bd.values())))
        for key, name in (("psnr", "whole-image PSNR"), ("foreground_psnr", "foreground PSNR")):
            lines += [f"## BD-rate of nervi-hpc against each codec ({name})", "",
                      "Bjøntegaard delta rate (VCEG-M33): the mean change in bytes nervi-hpc needs for the "
                      "same PSNR, over the PSNR range both cover; negative = nervi-hpc is smaller. — : fewer "
                      "than two points, or no common PSNR range.", "",
                      "| nervi method | " + " | ".join(codecs) + " |", "|---|" + "---|" * len(codecs)]
            lines += [f"| {n} | " + " | ".join(_percent(bd[n][c][key]) for c in codecs) + " |" for n in bd]
            lines.append("")
    lines += at_own_cr_markdown(points)
    lines += ["## Points", "", "| method | setting | CR | PSNR | foreground PSNR | MS-SSIM | encode s | decode s |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {p.method} | {p.setting} | {p.cr:.1f} | {cell(p.psnr)} | {cell(p.foreground_psnr)} | "
              f"{cell(p.ms_ssim, '.4f')} | {cell(p.encode_seconds, '.1f')} | {cell(p.decode_seconds, '.2f')} |"
              for p in sorted(points, key=lambda p: (p.method, p.cr))]
    lines.append("")
    if missing:
        lines += [f"Not run yet: {', '.join(f'{t.method} {t.setting}' for t in missing)}.", ""]
    lines += ["Plots: `rd-psnr.png` (whole-image and foreground PSNR vs CR), `rd-msssim.png`.", ""]
    return "\n".join(lines)


def at_own_cr_markdown(points: list[rd.Point]) -> list[str]:
    """Each nervi-hpc archive against each codec's sweep at the archive's own CR (interpolated in
    log CR; — where the sweep does not reach it): the comparison at exactly equal size."""
    codecs = sorted({p.method for p in points if p.kind == "codec"})
    runs = sorted((p for p in points if p.kind == "nervi" and p.psnr is not None), key=lambda p: (p.method, p.cr))
    if not codecs or not runs:
        return []
    sweeps = {c: [(p.cr, p.psnr) for p in points if p.method == c] for c in codecs}
    lines = ["## Each archive against the codecs at its own CR", "",
             "Whole-image PSNR (dB) of each codec at the archive's CR, and the archive's lead over it.", "",
             "| method | setting | CR | PSNR | " + " | ".join(codecs) + " |", "|---|---|---|---|" + "---|" * len(codecs)]
    for p in runs:
        values = [rd.at_cr(sweeps[c], p.cr) for c in codecs]
        lines.append(f"| {p.method} | {p.setting} | {p.cr:.1f} | {p.psnr:.2f} | " + " | ".join(
            "—" if v is None else f"{v:.2f} ({p.psnr - v:+.2f})" for v in values) + " |")
    return lines + [""]


def time_markdown(curves: dict[str, list[rd.TimePoint]], codec_lines: dict[str, dict[str, float]]) -> str:
    """The PSNR-vs-training-time table of each run with snapshots ("" when there are none)."""
    if not curves:
        return ""
    lines = ["## PSNR against training time", "",
             "The archive (quantized, entropy-coded, decoded) of each snapshot of the weights "
             "(`train.snapshot_minutes`); the codecs' PSNR at the run's final CR beside it (`rd-time.png`).", ""]
    for run, curve in curves.items():
        codecs = ", ".join(f"{c} {v:.2f} dB" for c, v in codec_lines.get(run, {}).items()) or "no codec reaches it"
        lines += [f"### {run} (CR {curve[-1].cr:.0f}; codecs at this CR: {codecs})", "",
                  "| minutes | CPU minutes | epochs | CR | PSNR | foreground PSNR |", "|---|---|---|---|---|---|"]
        lines += [f"| {p.minutes:.1f} | {p.cpu_minutes:.1f} | {p.epochs} | {p.cr:.1f} | {cell(p.psnr)} | "
                  f"{cell(p.foreground_psnr)} |" for p in curve]
        lines.append("")
    return "\n".join(lines)
