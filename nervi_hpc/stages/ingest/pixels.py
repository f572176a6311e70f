"""What ingest makes of a source's pixels: RGB composited over the background, the foreground
mask, the background colour detected from a sample of images."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ...data.sources import Source
from ...errors import SourceError


BACKGROUND_SAMPLES = 16
WHITE = (255, 255, 255)


def composite(rgb: np.ndarray, alpha: np.ndarray | None, background: Sequence[int]) -> np.ndarray:
    """Straight RGB (…, 3) with alpha (…) over `background`, rounded in integer math; RGB as is
    when there is no alpha."""
    if alpha is None:
        return rgb
    a = alpha[..., None].astype(np.uint16)
    bg = np.asarray(background, np.uint16)
    return ((rgb.astype(np.uint16) * a + bg * (255 - a) + 127) // 255).astype(np.uint8)


def foreground_mask(rgb: np.ndarray, alpha: np.ndarray | None, background: Sequence[int],
                    tolerance: int) -> np.ndarray:
    """uint8 0/1: alpha > 0 where there is alpha, else a channel differs from the background by
    more than `tolerance`."""
    if alpha is not None:
        return (alpha > 0).view(np.uint8)
    far = np.zeros(rgb.shape[:-1], bool)
    for channel, value in enumerate(background):  # two uint8 comparisons per channel: no wide copies
        plane = rgb[..., channel]
        if value + tolerance < 255:
            far |= plane > value + tolerance
        if value - tolerance > 0:
            far |= plane < value - tolerance
    return far.view(np.uint8)


def spread(count: int, k: int) -> np.ndarray:
    """Up to `k` distinct indices spread evenly over 0..count-1, first and last included."""
    return np.unique(np.linspace(0, count - 1, min(k, count)).round().astype(np.int64))


def detect_background(source: Source) -> tuple[int, int, int]:
    """The most common colour of the border pixels of up to 16 images spread over the source
    (white for images with alpha). SourceError when no colour covers most of the border."""
    borders = []
    for index in spread(len(source), BACKGROUND_SAMPLES).tolist():  # one at a time: 8192² fits too
        (rgb,), alpha = read_pixels(source, [index])
        if alpha is not None:
            return WHITE
        borders += [rgb[0], rgb[-1], rgb[1:-1, 0], rgb[1:-1, -1]]
    codes = np.concatenate(borders).astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], np.uint32)
    values, counts = np.unique(codes, return_counts=True)
    top = int(values[counts.argmax()])
    colour = (top >> 16, (top >> 8) & 255, top & 255)
    share = counts.max() / codes.size
    if share <= 0.5:
        raise SourceError(f"{source.description}: cannot detect the background colour: the most "
                          f"common border colour {list(colour)} covers only {share:.0%} of the image "
                          f"borders; give the background as [r, g, b]")
    return colour


def read_pixels(source: Source, indices: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
    """source.read, checked against the Source contract."""
    rgb, alpha = source.read(indices)
    shape = (len(indices), *source.size)
    if (rgb.dtype != np.uint8 or rgb.shape != (*shape, 3)
            or alpha is not None and (alpha.dtype != np.uint8 or alpha.shape != shape)):
        got = f"{rgb.shape} {rgb.dtype}" + ("" if alpha is None else f" + alpha {alpha.shape} {alpha.dtype}")
        raise SourceError(f"{source.label(indices[0])}: the source returned pixels {got}, "
                          f"expected {(*shape, 3)} uint8")
    return rgb, alpha


def check_source(source: Source) -> None:
    where = source.description
    params = np.asarray(source.params)
    if len(params) == 0:
        raise SourceError(f"{where}: no images")
    if params.ndim != 2 or params.shape[1] != len(source.names):
        raise SourceError(f"{where}: params have shape {params.shape}, expected "
                          f"({len(params)}, {len(source.names)}) for {', '.join(source.names)}")
    bad = np.flatnonzero(~np.isfinite(params).all(axis=1))
    if bad.size:
        raise SourceError(f"{where}: image {bad[0]} has non-finite parameter values {params[bad[0]].tolist()}")
