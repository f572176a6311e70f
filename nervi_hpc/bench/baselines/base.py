"""What every baseline codec shares: the codec and encoded-collection interfaces, the frame order,
batched store reads, timing, and `run`, which measures an encoding exactly as `nervi-hpc eval`
measures an archive (nervi_hpc.stages.evaluate.measure → the same summary.json schema)."""

from __future__ import annotations

import abc
import os
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from ...data.store import RenderStore
from ...stages.evaluate.measure import measure
from ...stages.evaluate.summary import EvalResult, write_report

BATCH_PIXELS = 4 << 20   # images read, decoded and measured at a time: about this many pixels


class Stopwatch:
    """Wall time accumulated over the `with` blocks it is used in."""

    def __init__(self):
        self.seconds = 0.0

    def __enter__(self):
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds += time.perf_counter() - self._start


class Encoded(abc.ABC):
    """A whole collection encoded in memory: its size, and a decoder back to uint8 images."""

    nbytes: int
    encode_seconds: float    # time in the encoder only (store reads excluded)
    batch_size: int          # images per decoder call

    @abc.abstractmethod
    def decode(self, wanted: set[int] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(store indices, uint8 images (b, H, W, 3)) for every image, or only those in `wanted`,
        in the codec's own order."""


class Codec(abc.ABC):
    """One standard codec: a quality knob swept over `sweep` (best quality first) and the
    options a bench spec may set (`Options`, a dataclass loaded strictly by config.build)."""

    name: str                    # registry key, e.g. "h264"
    encoder: str                 # the library doing the work, e.g. "libx264"
    knob: str                    # what a sweep value is: "crf", "q" (quality) or "eb" (error bound)
    sweep: tuple[float, ...]     # the default settings, from the highest quality to the lowest
    Options: type

    @abc.abstractmethod
    def encode(self, store: RenderStore, value: float, options, threads: int) -> Encoded:
        """Encode every image of `store` at setting `value`."""

    @abc.abstractmethod
    def describe(self, value: float, options) -> dict[str, Any]:
        """The settings that produced an encoding, for summary.json's `archive.options`."""

    @abc.abstractmethod
    def precision(self, options) -> str:
        """The representation the codec works in (summary.json's `timing.precision`)."""

    def setting(self, value: float) -> str:
        """The folder name of one sweep point, e.g. `crf-30`, `q-50`, `eb-0.01`."""
        return f"{self.knob}-{value:g}"


def serpentine_order(store: RenderStore) -> np.ndarray:
    """Store indices in a serpentine (boustrophedon) walk of the parameter grid, the first
    parameter outermost and the last innermost: each parameter's direction reverses whenever the
    walk of the parameters before it has taken an odd number of steps, so consecutive images
    differ by one grid step of one parameter (neighbouring views). Images are placed by their
    grid position, so a partial grid keeps the walk's order; ties keep the store's order."""
    params = store.params
    rank = np.zeros(len(params), np.int64)
    for p, name in enumerate(store.param_names):
        grid = np.asarray(store.grids[name], np.float64)
        position = np.clip(np.searchsorted(grid, params[:, p]), 0, len(grid) - 1)
        position = np.where(rank % 2 == 1, len(grid) - 1 - position, position)
        rank = rank * len(grid) + position
    return np.argsort(rank, kind="stable")


def batch_size(store: RenderStore) -> int:
    """Images per batch: about BATCH_PIXELS, at least one."""
    return max(1, BATCH_PIXELS // (store.height * store.width))


def batched(pairs: Iterable[tuple[int, np.ndarray]], size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(index, image) pairs grouped into (indices, images (b, H, W, 3)) of at most `size`."""
    indices, images = [], []
    for index, image in pairs:
        indices.append(index)
        images.append(image)
        if len(indices) == size:
            yield np.array(indices), np.stack(images)
            indices, images = [], []
    if indices:
        yield np.array(indices), np.stack(images)


def read_batches(store: RenderStore, order: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(indices, uint8 images) of `order`, batch by batch (only one batch in memory)."""
    size = batch_size(store)
    for start in range(0, len(order), size):
        indices = order[start:start + size]
        yield indices, store.read(indices.tolist())[0]


def default_threads() -> int:
    """Codec threads: as many as torch uses here (OMP_NUM_THREADS), so codecs and the nervi
    decoder are timed with the same parallelism."""
    return torch.get_num_threads()


def timed(batches: Iterable, clock: Stopwatch) -> Iterator:
    """`batches`, with the time spent producing each item added to `clock`."""
    iterator = iter(batches)
    while True:
        with clock:
            item = next(iterator, None)
        if item is None:
            return
        yield item


def _collect(encoded: Encoded, indices: list[int], shape: tuple[int, ...]) -> np.ndarray:
    """The decoded images of `indices`, in that order."""
    out = np.empty((len(indices), *shape), np.uint8)
    where = {index: k for k, index in enumerate(indices)}
    for batch_indices, images in encoded.decode(set(indices)):
        for index, image in zip(batch_indices.tolist(), images):
            if index in where:  # a codec may decode a few more than asked (SZ3: whole chunks)
                out[where[index]] = image
    return out


def run(codec: Codec, store: RenderStore, value: float, out_dir: str | os.PathLike, *, options=None,
        label: str | None = None, threads: int | None = None,
        device: str | torch.device = "cpu") -> EvalResult:
    """Encode `store` with `codec` at `value`, decode it, measure it against the ground truth and
    write summary.json, summary.md, per_image.csv and contact.png into `out_dir`."""
    options = options if options is not None else codec.Options()
    threads = threads or default_threads()
    label = label or codec.name
    encoded = codec.encode(store, value, options, threads)
    decode_clock = Stopwatch()
    measured = measure(store, timed(encoded.decode(), decode_clock), device)
    setting = codec.setting(value)
    figures = measured.figures(
        archive={"path": None, "bytes": encoded.nbytes, "codec": label, "encoder": codec.encoder,
                 "setting": setting, "options": codec.describe(value, options)},
        timing={"encode_seconds": encoded.encode_seconds, "decode_seconds": decode_clock.seconds,
                "device": "cpu", "precision": codec.precision(options), "batch_size": encoded.batch_size,
                "threads": threads})
    psnr = figures["psnr_db"]["mean"]
    title = (f"{label} {setting} ({codec.encoder}): {store.count} images {store.width}x{store.height}, "
             f"CR {figures['compression_ratio']:.1f}, mean PSNR {'n/a' if psnr is None else f'{psnr:.2f} dB'}")
    shape = (store.height, store.width, 3)
    return write_report(Path(out_dir), measured, figures, lambda indices: _collect(encoded, indices, shape), title)
