"""Where renders come from: a Cinema database, an image folder, or a synthetic scene.

A `Source` is a picklable description of N images with P parameters each; worker processes
call `read` on slices of it. `open_source` turns a source section of dataset.yaml into one.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ...config import CinemaSource, FolderSource, SourceSpec, SyntheticSource

MAX_IMAGES = 10_000_000  # images one collection may hold (a store, a synthetic grid, an archive)


@dataclass
class Source(abc.ABC):
    """N images of one size with their parameter values.

    names:       parameter names, e.g. ("t", "theta", "phi")
    params:      float64 (N, P), one row per image, no two rows equal
    size:        (H, W) of every image
    mode:        "ir", "dvr" or "unknown"
    background:  RGB the images are composited on, or None to detect it from the images
    mask_tolerance: a pixel is foreground when a channel differs from the background by more
    description: one line for the store's attrs
    """

    names: tuple[str, ...]
    params: np.ndarray
    size: tuple[int, int]
    mode: str
    background: tuple[int, int, int] | None
    mask_tolerance: int
    description: str

    def __len__(self) -> int:
        return len(self.params)

    @abc.abstractmethod
    def read(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray | None]:
        """Images `indices` as straight (not premultiplied) RGB uint8 (n, H, W, 3) and alpha
        uint8 (n, H, W), or None when the images have no alpha. Raises SourceError naming the
        file and the problem (missing, corrupt, wrong size, wrong channel count)."""

    def label(self, index: int) -> str:
        """What to call image `index` in an error message (its file, or its parameters)."""
        return ", ".join(f"{n}={v:g}" for n, v in zip(self.names, self.params[index]))


def open_source(spec: SourceSpec) -> Source:
    """The Source a dataset.yaml source section describes."""
    if isinstance(spec, SyntheticSource):
        from .synthetic import SyntheticScene

        return SyntheticScene.from_spec(spec)
    if isinstance(spec, CinemaSource):
        from .cinema import CinemaDatabase

        return CinemaDatabase.open(spec.path, background=spec.background, mask_tolerance=spec.mask_tolerance,
                                   mode=spec.mode, allow_outside=spec.allow_outside)
    if isinstance(spec, FolderSource):
        from .folder import ImageFolder

        return ImageFolder.open(spec.path, spec.pattern, background=spec.background,
                                mask_tolerance=spec.mask_tolerance, mode=spec.mode)
    raise TypeError(f"not a source spec: {spec!r}")
