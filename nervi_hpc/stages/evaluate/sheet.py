"""The contact sheet: the worst, median and best image as ground truth | decoded | ΔE*uv."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ...data.store import RenderStore
from ...parameters import label
from .colour import colour_map, delta_e_uv


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


def sheet_picks(psnr: np.ndarray) -> dict[str, int]:
    """Indices of the worst, median and best image by PSNR (identical images rank best)."""
    order = np.argsort(psnr, kind="stable")
    return {"worst": int(order[0]), "median": int(order[(len(order) - 1) // 2]), "best": int(order[-1])}


def sheet_rows(renders: RenderStore, picks: dict[str, int], psnr: np.ndarray,
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

