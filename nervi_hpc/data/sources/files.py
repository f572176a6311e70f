"""The shared base of file-backed sources: one image file per parameter row."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np

from ...errors import SourceError
from ..imaging import read_image
from . import Source

NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
"""A number as written in file names and CSV cells: signed, decimal, optional exponent."""


class Entry(NamedTuple):
    """One image found by a source: its parameters, its file and where it was listed ("" if
    the file name itself is the listing)."""

    params: tuple[float, ...]
    path: str
    where: str = ""

    def describe(self) -> str:
        """The file (quoted if it holds line breaks or other unprintable characters) and where."""
        path = self.path if self.path.isprintable() else repr(self.path)
        return f"{path} ({self.where})" if self.where else path


@dataclass
class FileSource(Source):
    """Images read from files, `files[i]` holding the image of `params[i]`.

    Rows are sorted by their parameters (lexicographically), so the order does not depend on
    the listing. Size and alpha are those of the first image; `read` checks every other image
    against them.
    """

    files: tuple[str, ...]
    has_alpha: bool

    @classmethod
    def from_entries(cls, names: Sequence[str], entries: Sequence[Entry], *, description: str,
                     background=None, mask_tolerance: int = 0, mode: str = "unknown") -> "FileSource":
        """Check the entries (files exist, no two with the same parameters), sort them, and take
        size and alpha from the first image (decoded, so a bad first image fails here)."""
        for entry in entries:
            _check_is_file(entry)
        ordered = sorted(entries, key=lambda e: e.params)
        for before, after in zip(ordered, ordered[1:]):
            if before.params == after.params:
                values = ", ".join(f"{n}={v:g}" for n, v in zip(names, before.params))
                raise SourceError(f"{before.describe()} and {after.describe()} have the same "
                                  f"parameters ({values})")
        rgb, alpha = read_image(ordered[0].path)
        return cls(names=tuple(names),
                   params=np.array([e.params for e in ordered], dtype=np.float64).reshape(len(ordered), len(names)),
                   size=(rgb.shape[0], rgb.shape[1]), mode=mode,
                   background=None if background is None else tuple(background),
                   mask_tolerance=mask_tolerance, description=description,
                   files=tuple(e.path for e in ordered), has_alpha=alpha is not None)

    def read(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray | None]:
        height, width = self.size
        rgbs = np.empty((len(indices), height, width, 3), np.uint8)
        alphas = np.empty((len(indices), height, width), np.uint8) if self.has_alpha else None
        for k, index in enumerate(indices):
            path = self.files[index]
            rgb, alpha = read_image(path)
            if rgb.shape[:2] != self.size:
                raise SourceError(f"{path}: image is {rgb.shape[1]}×{rgb.shape[0]} pixels but "
                                  f"{self.files[0]} is {width}×{height} (all images must have one size)")
            if (alpha is not None) != self.has_alpha:
                raise SourceError(f"{path}: image is {'RGBA' if alpha is not None else 'RGB'} but "
                                  f"{self.files[0]} is {'RGBA' if self.has_alpha else 'RGB'} "
                                  f"(all images must agree on having alpha)")
            rgbs[k] = rgb
            if alphas is not None:
                alphas[k] = alpha
        return rgbs, alphas

    def label(self, index: int) -> str:
        return self.files[index]


def _check_is_file(entry: Entry) -> None:
    try:
        mode = os.stat(entry.path).st_mode
    except FileNotFoundError:
        raise SourceError(f"{entry.describe()}: image file is missing") from None
    except OSError as e:
        raise SourceError(f"{entry.describe()}: cannot stat image file ({e.strerror})") from None
    if not stat.S_ISREG(mode):
        raise SourceError(f"{entry.describe()}: not a regular file")

