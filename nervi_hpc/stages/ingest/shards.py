"""The plan every worker follows: the partial store, its fingerprint and state, one shard's
writing and the atomic finish."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ... import atomic
from ...data.imaging import write_contact_sheet
from ...data.sources import Source
from ...errors import StoreError
from ...data.store import (FORMAT, INGEST_DIR, VERSION, RenderStore, create_arrays, finish_attrs,
                           partial_path, read_attrs, write_shard)
from .pixels import composite, detect_background, foreground_mask, read_pixels, spread


SHARD_BYTES = 64 * 2**20  # default shard: images per this many bytes of raw pixels
BATCH_BYTES = 16 * 2**20  # images asked of the source per read (memory, progress steps)


SHEET_IMAGES = 64


@dataclass(frozen=True)
class Plan:
    source: Source
    partial: Path
    shard_size: int
    background: tuple[int, int, int]

    @property
    def shards(self) -> int:
        return -(-len(self.source) // self.shard_size)

    def bounds(self, shard: int) -> tuple[int, int]:
        start = shard * self.shard_size
        return start, min(start + self.shard_size, len(self.source))

    def marker(self, shard: int) -> Path:
        return self.partial / INGEST_DIR / f"shard-{shard:05d}.done"

    def done(self) -> set[int]:
        """The shards with a marker (one folder listing, not a stat per shard)."""
        names = set(os.listdir(self.partial / INGEST_DIR))
        return {s for s in range(self.shards) if self.marker(s).name in names}

    def images_in(self, shards) -> int:
        return sum(stop - start for start, stop in map(self.bounds, shards))


def _state_file(partial: Path) -> Path:
    return partial / INGEST_DIR / "state.json"


def default_shard_size(count: int, height: int, width: int) -> int:
    """Images per ≈ 64 MB of raw pixels, at least 1, at most `count`."""
    return max(1, min(count, SHARD_BYTES // (height * width * 3)))


def fingerprint(source: Source, shard_size: int) -> str:
    """A digest of everything that determines the store's content and layout."""
    params = np.ascontiguousarray(source.params, dtype="<f8")
    facts = {"version": VERSION, "names": list(source.names), "params_shape": list(params.shape),
             "params_sha256": hashlib.sha256(params.tobytes()).hexdigest(),
             "size": list(source.size), "mode": source.mode, "description": source.description,
             "background": None if source.background is None else list(source.background),
             "mask_tolerance": source.mask_tolerance, "shard_size": shard_size}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def prepare(source: Source, store_path: Path, shard_size: int, digest: str) -> tuple[int, int, int] | None:
    """Create or resume the partial store and return its background colour; None if the store is
    already complete."""
    if store_path.exists():
        attrs = read_attrs(store_path)
        if attrs is None or attrs.get("nervi_format") != FORMAT:
            raise StoreError(f"{store_path}: exists and is not a nervi renders store; refusing to overwrite it")
        if attrs.get("fingerprint") != digest:
            raise StoreError(f"{store_path}: a complete store of another source or shard size is there; "
                             f"refusing to overwrite it (remove it or choose another output)")
        shutil.rmtree(store_path / INGEST_DIR, ignore_errors=True)  # left by a crash after the rename
        return None
    partial = partial_path(store_path)
    try:
        state = json.loads(_state_file(partial).read_text())
    except (OSError, ValueError):
        state = None
    if state is not None and state.get("fingerprint") == digest:
        return tuple(state["background"])
    if partial.exists():
        _say(f"discarding {partial}: an unfinished ingest of another source or shard size (or one "
             f"that never got past its set-up)")
        shutil.rmtree(partial)
    background = tuple(source.background) if source.background is not None else detect_background(source)
    create_arrays(partial, np.asarray(source.params, np.float64), *source.size, shard_size)
    (partial / INGEST_DIR).mkdir()
    atomic.write_json(_state_file(partial), {"fingerprint": digest, "background": list(background)})
    return background


def write_one_shard(plan: Plan, shard: int, report: Callable[[int], object]) -> None:
    """Read, composite and mask the images of one shard, write it whole, then mark it done."""
    start, stop = plan.bounds(shard)
    height, width = plan.source.size
    images = np.empty((stop - start, height, width, 3), np.uint8)
    masks = np.empty((stop - start, height, width), np.uint8)
    step = max(1, BATCH_BYTES // (height * width * 3))
    for lo in range(start, stop, step):
        hi = min(lo + step, stop)
        rgb, alpha = read_pixels(plan.source, list(range(lo, hi)))
        images[lo - start:hi - start] = composite(rgb, alpha, plan.background)
        masks[lo - start:hi - start] = foreground_mask(rgb, alpha, plan.background, plan.source.mask_tolerance)
        report(hi - lo)
    write_shard(plan.partial, start, images, masks)
    atomic.write_text(plan.marker(shard), "")


def finish(plan: Plan, store_path: Path, digest: str) -> None:
    """Write the attrs that make the store complete and move it to its final path."""
    source = plan.source
    params = np.asarray(source.params, np.float64)
    finish_attrs(plan.partial, {
        "param_names": list(source.names),
        "grids": {n: np.unique(params[:, j]).tolist() for j, n in enumerate(source.names)},
        "ranges": {n: [float(params[:, j].min()), float(params[:, j].max())] for j, n in enumerate(source.names)},
        "background": list(plan.background), "mode": source.mode, "source": source.description,
        "shard_size": plan.shard_size, "count": len(source), "height": source.size[0],
        "width": source.size[1], "fingerprint": digest,
    })
    try:
        os.rename(plan.partial, store_path)
    except OSError as e:
        raise StoreError(f"{store_path}: cannot move the finished ingest there ({e.strerror})") from None
    shutil.rmtree(store_path / INGEST_DIR, ignore_errors=True)  # bookkeeping only: a re-run also clears it


def write_store_contact_sheet(store: RenderStore, path: str | os.PathLike) -> None:
    """A PNG of up to 64 images spread over the store, labelled with their parameters."""
    picks = spread(len(store), SHEET_IMAGES)
    images, _ = store.read(picks)
    labels = [" ".join(f"{name}={value:.4g}" for name, value in zip(store.param_names, store.params[i]))
              for i in picks]
    write_contact_sheet(path, list(images), labels)


def _say(message: str) -> None:
    print(f"nervi-hpc ingest: {message}", file=sys.stderr)
