"""Image files: read PNG/JPEG with clear errors, write PNG atomically, contact sheets."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from .. import atomic
from ..errors import SourceError


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """An image file as RGB uint8 (H, W, 3) and alpha uint8 (H, W) or None.

    Accepts 8-bit RGB and RGBA (and palette images, which PIL expands). Anything else, a missing
    file or a corrupt one raises SourceError naming the file.
    """
    try:
        with Image.open(path) as im:
            if any(";16" in str(tile.args) for tile in im.tile):  # PIL would keep only the top 8 bits
                raise SourceError(f"{path}: {im.mode} image with 16 bits per channel; expected 8-bit RGB or RGBA")
            im.load()
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            if im.mode not in ("RGB", "RGBA"):
                raise SourceError(f"{path}: unsupported image mode {im.mode} "
                                  f"({len(im.getbands())} channel(s); expected RGB or RGBA, 8 bits)")
            pixels = np.asarray(im)
    except FileNotFoundError:
        raise SourceError(f"{path}: image file is missing") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        if isinstance(e, SourceError):
            raise
        raise SourceError(f"{path}: corrupt or unreadable image ({e})") from None
    if pixels.shape[2] == 4:
        return np.ascontiguousarray(pixels[..., :3]), np.ascontiguousarray(pixels[..., 3])
    return pixels, None


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of an image file from its header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except FileNotFoundError:
        raise SourceError(f"{path}: image file is missing") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:  # PIL refuses a bomb from
        raise SourceError(f"{path}: corrupt or unreadable image ({e})") from None  # its header, before decoding


def write_png(path: str | os.PathLike, rgb: np.ndarray, alpha: np.ndarray | None = None) -> None:
    """Write RGB uint8 (H, W, 3), with optional alpha (H, W), as a PNG, atomically."""
    pixels = rgb if alpha is None else np.concatenate([rgb, alpha[..., None]], axis=-1)
    with atomic.atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(pixels)).save(tmp, format="PNG")


def write_jpeg(path: str | os.PathLike, rgb: np.ndarray, quality: int = 95) -> None:
    """Write RGB uint8 (H, W, 3) as a JPEG (4:4:4, so thin lines keep their colour), atomically."""
    with atomic.atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(rgb)).save(tmp, format="JPEG", quality=quality, subsampling=0)


def contact_sheet(images: Sequence[np.ndarray], labels: Sequence[str] | None = None,
                  columns: int = 8, gap: int = 2) -> np.ndarray:
    """Tile RGB uint8 images (all H, W) into one RGB image with optional captions."""
    h, w = images[0].shape[:2]
    rows = -(-len(images) // columns)
    cols = min(columns, len(images))
    caption = 12 if labels else 0
    sheet = np.full((rows * (h + caption + gap) + gap, cols * (w + gap) + gap, 3), 96, np.uint8)
    for k, img in enumerate(images):
        r, c = divmod(k, columns)
        y, x = gap + r * (h + caption + gap), gap + c * (w + gap)
        sheet[y + caption:y + caption + h, x:x + w] = img
    picture = Image.fromarray(sheet)
    if labels:
        draw = ImageDraw.Draw(picture)
        for k, text in enumerate(labels):
            r, c = divmod(k, columns)
            draw.text((gap + c * (w + gap) + 1, gap + r * (h + caption + gap)), text, fill=(255, 255, 255))
    return np.asarray(picture)


def write_contact_sheet(path: str | Path, images: Sequence[np.ndarray],
                        labels: Sequence[str] | None = None, columns: int = 8) -> None:
    write_png(path, contact_sheet(images, labels, columns))
