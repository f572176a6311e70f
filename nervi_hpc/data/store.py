"""renders.zarr: the sharded Zarr v3 store of a render collection, its schema and its reader.

Layout (a Zarr v3 group):
  images  uint8 (N, H, W, 3)  chunk = one image, shard = `shard_size` images, Blosc zstd
  masks   uint8 (N, H, W)     1 = foreground, same chunking and sharding
  params  float64 (N, P)      one chunk
Group attrs: nervi_format "renders", version, param_names, grids, ranges, background, mode,
source, shard_size, count, height, width (and the ingest's fingerprint). The attrs are written
last, when every shard is in place, so a store without them is an unfinished ingest.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from ..errors import StoreError

FORMAT = "renders"
VERSION = 1
PARTIAL_SUFFIX = ".partial"
INGEST_DIR = ".ingest"  # bookkeeping of an unfinished ingest, inside the partial store
ATTRS = ("param_names", "grids", "ranges", "background", "mode", "source", "shard_size",
         "count", "height", "width")


def partial_path(path: str | os.PathLike) -> Path:
    """Where the ingest of `path` writes until it is complete: a sibling `<path>.partial`."""
    path = Path(path)
    return path.with_name(path.name + PARTIAL_SUFFIX)


def _compressor() -> BloscCodec:
    # Measured on render-like 1024² images: level 3 compresses as fast as PNG decodes, ~28× (level
    # 5: 1.5× slower, ~34×); bitshuffle halves the ratio of interleaved RGB.
    return BloscCodec(cname="zstd", clevel=3, shuffle="noshuffle")


def create_arrays(path: Path, params: np.ndarray, height: int, width: int, shard_size: int) -> None:
    """Create the group at `path` with empty image and mask arrays and the filled params array."""
    count = len(params)
    group = zarr.create_group(store=str(path), overwrite=True)
    group.create_array("images", shape=(count, height, width, 3), dtype="uint8",
                       chunks=(1, height, width, 3), shards=(shard_size, height, width, 3),
                       compressors=_compressor(), fill_value=0)
    group.create_array("masks", shape=(count, height, width), dtype="uint8",
                       chunks=(1, height, width), shards=(shard_size, height, width),
                       compressors=_compressor(), fill_value=0)
    group.create_array("params", data=np.ascontiguousarray(params, dtype=np.float64),
                       chunks=params.shape, compressors=None)


def write_shard(path: Path, start: int, images: np.ndarray, masks: np.ndarray) -> None:
    """Write whole shards of images and masks starting at image `start` (shard-aligned)."""
    group = zarr.open_group(str(path), mode="r+")
    stop = start + len(images)
    with zarr.config.set({"array.write_empty_chunks": True}):  # skips a scan of every chunk: ~30% faster
        group["images"][start:stop] = images
        group["masks"][start:stop] = masks


def finish_attrs(path: Path, attrs: dict) -> None:
    """Write the group attrs that mark the store complete (`nervi_format`, `version` added)."""
    group = zarr.open_group(str(path), mode="r+")
    group.update_attributes({"nervi_format": FORMAT, "version": VERSION, **attrs})


def read_attrs(path: Path) -> dict | None:
    """The group attrs of the Zarr group at `path`, or None if there is no readable group."""
    try:
        return zarr.open_group(str(path), mode="r").attrs.asdict()
    except (OSError, ValueError):  # zarr's "no group here" errors derive from both
        return None


class RenderStore:
    """Read access to a complete renders.zarr. Opening reads metadata only, never pixels."""

    def __init__(self, path: Path, group: zarr.Group, attrs: dict):
        self.path = path
        self._group = group
        self._attrs = attrs
        self._images = group["images"]
        self._masks = group["masks"]

    @classmethod
    def open(cls, path: str | os.PathLike) -> "RenderStore":
        """Open the store at `path`; StoreError if it is missing, unfinished, foreign or too new."""
        path = Path(path)
        if not path.exists():
            partial = partial_path(path)
            if partial.exists():
                raise StoreError(f"{path}: unfinished ingest ({partial} exists); "
                                 f"re-run the ingest to resume it")
            raise StoreError(f"{path}: no such store")
        attrs = read_attrs(path)
        if attrs is None or attrs.get("nervi_format") != FORMAT:
            if (path / INGEST_DIR).is_dir():
                raise StoreError(f"{path}: unfinished ingest; re-run the ingest to resume it")
            raise StoreError(f"{path}: not a nervi renders store")
        version = attrs.get("version")
        if not isinstance(version, int) or version > VERSION:
            raise StoreError(f"{path}: store format version {version} is newer than this "
                             f"nervi-hpc reads ({VERSION}); upgrade nervi-hpc")
        missing = [key for key in ATTRS if key not in attrs]
        if missing:
            raise StoreError(f"{path}: store attrs lack {', '.join(missing)}")
        group = zarr.open_group(str(path), mode="r")
        store = cls(path, group, attrs)
        expected = {"images": (store.count, store.height, store.width, 3),
                    "masks": (store.count, store.height, store.width),
                    "params": (store.count, len(store.param_names))}
        for name, shape in expected.items():
            if name not in group or group[name].shape != shape:
                found = group[name].shape if name in group else "missing"
                raise StoreError(f"{path}: array {name!r} is {found}, expected shape {shape}")
        return store

    # --- metadata -----------------------------------------------------------------------------

    @property
    def count(self) -> int:
        return int(self._attrs["count"])

    @property
    def height(self) -> int:
        return int(self._attrs["height"])

    @property
    def width(self) -> int:
        return int(self._attrs["width"])

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(self._attrs["param_names"])

    @functools.cached_property
    def params(self) -> np.ndarray:
        """float64 (N, P), one row per image."""
        return np.asarray(self._group["params"][...], dtype=np.float64)

    @property
    def grids(self) -> dict[str, list[float]]:
        """Per parameter, its sorted distinct values."""
        return {name: list(values) for name, values in self._attrs["grids"].items()}

    @property
    def ranges(self) -> dict[str, tuple[float, float]]:
        """Per parameter, (min, max)."""
        return {name: (lo, hi) for name, (lo, hi) in self._attrs["ranges"].items()}

    @property
    def background(self) -> tuple[int, int, int]:
        return tuple(self._attrs["background"])

    @property
    def mode(self) -> str:
        return self._attrs["mode"]

    @property
    def shard_size(self) -> int:
        return int(self._attrs["shard_size"])

    @property
    def source(self) -> str:
        """The description of where the renders came from."""
        return self._attrs["source"]

    @property
    def fingerprint(self) -> str:
        """What the ingest that wrote the store was given (see nervi_hpc.stages.ingest)."""
        return self._attrs.get("fingerprint", "")

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return (f"RenderStore({str(self.path)!r}, {self.count} images {self.width}×{self.height}, "
                f"params {', '.join(self.param_names)})")

    # --- pixels -------------------------------------------------------------------------------

    def shard_of(self, index: int) -> int:
        """The shard that holds image `index`."""
        return index // self.shard_size

    def read(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Images uint8 (n, H, W, 3) and masks uint8 (n, H, W) of `indices`, in the order asked.

        Underneath, the distinct indices are read in ascending order, each run of consecutive
        indices within one shard as one slice, so a parallel file system sees sequential reads of
        few files. (Zarr's integer-array indexing decodes far more than it returns: 20 images of a
        341-image shard took 20× longer than 20 one-image slices.)
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size and (indices.min() < 0 or indices.max() >= self.count):
            bad = indices[(indices < 0) | (indices >= self.count)][0]
            raise IndexError(f"{self.path}: image index {bad} out of range 0..{self.count - 1}")
        unique, inverse = np.unique(indices, return_inverse=True)
        images = np.empty((len(unique), self.height, self.width, 3), np.uint8)
        masks = np.empty((len(unique), self.height, self.width), np.uint8)
        breaks = (np.diff(unique) != 1) | (np.diff(unique // self.shard_size) != 0)
        for run in np.split(np.arange(len(unique)), np.flatnonzero(breaks) + 1):
            if run.size:
                start, stop = unique[run[0]], unique[run[-1]] + 1
                images[run[0]:run[-1] + 1] = self._images[start:stop]
                masks[run[0]:run[-1] + 1] = self._masks[start:stop]
        return images[inverse], masks[inverse]
