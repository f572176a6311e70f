"""Frames of one archive on demand: batched decoding, an LRU cache of encoded frames, prefetch.

A `FrameService` owns one worker thread. Requests (`frame(row, fmt)`) and prefetch hints
(`prefetch(rows, fmt)`) join queues; the worker takes every waiting request at once (up to the
decoder's batch size) and decodes them in one forward pass, so concurrent requests are batched
without anyone waiting for a batch to fill. Prefetches run only when no request waits, a few at a
time, and the oldest are dropped when newer hints arrive (the user has moved on). Encoded frames
go to a byte-bounded LRU cache, so a frame asked for twice, or prefetched, costs a lookup.
"""

from __future__ import annotations

import io
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from ..data.store import RenderStore
from ..errors import ParameterError
from ..stages.decode.decoder import Decoder
from ..stages.evaluate.colour import DELTA_E_SCALE, colour_map, delta_e_uv

FORMATS = {"png": "image/png", "webp": "image/webp"}
# the decoded RGB image, its foreground mask (white on black), and with a renders store the
# ground truth and the ΔE*uv map between the two (evaluate's colours, 0..DELTA_E_SCALE)
LAYERS = ("image", "mask", "truth", "delta")
COMPARED = ("truth", "delta")
ENCODERS = {"png": {"format": "PNG", "compress_level": 1},  # fastest levels: this runs per frame
            "webp": {"format": "WEBP", "lossless": True, "quality": 0, "method": 0}}
DEFAULT_CACHE_BYTES = 256 << 20
PREFETCH_QUEUE = 64          # prefetch hints kept; older ones are dropped
PLAY_AHEAD = 6               # frames prefetched ahead along the parameter being played

Key = tuple[tuple[float, ...], str, str]  # (row, format, layer)


@dataclass(frozen=True)
class Frame:
    """An encoded frame and how it was made. `decode_ms` is the frame's share of its batch."""

    data: bytes
    mime: str
    decode_ms: float
    encode_ms: float
    batch: int
    unseen: bool


def encode_image(image: np.ndarray, fmt: str) -> bytes:
    """RGB uint8 (H, W, 3) as `fmt` bytes; both formats are lossless, so they keep the decoded pixels."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, **ENCODERS[fmt])
    return buffer.getvalue()


class FrameCache:
    """Least-recently-used frames, bounded by the bytes they hold. Not thread-safe on its own."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._frames: OrderedDict[Key, Frame] = OrderedDict()

    def __len__(self) -> int:
        return len(self._frames)

    def __contains__(self, key: Key) -> bool:
        return key in self._frames

    def get(self, key: Key) -> Frame | None:
        frame = self._frames.get(key)
        if frame is not None:
            self._frames.move_to_end(key)
        return frame

    def put(self, key: Key, frame: Frame) -> None:
        if key in self._frames:
            self.bytes -= len(self._frames.pop(key).data)
        self._frames[key] = frame
        self.bytes += len(frame.data)
        while self.bytes > self.max_bytes and len(self._frames) > 1:
            self.bytes -= len(self._frames.popitem(last=False)[1].data)


class _Job:
    """A frame being made; requests for the same frame wait on the same job."""

    def __init__(self):
        self.done = threading.Event()
        self.frame: Frame | None = None
        self.error: BaseException | None = None


@dataclass
class Stats:
    """Counters, for the /api/stats endpoint, tests and benchmarks."""

    requests: int = 0
    hits: int = 0
    batches: int = 0
    decoded: int = 0
    prefetched: int = 0


class FrameService:
    """Frames of one decoder's archive; see the module docstring. Call `close()` when done."""

    def __init__(self, decoder: Decoder, *, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 prefetch_batch: int | None = None, truth: RenderStore | None = None):
        self.decoder = decoder
        self.truth = truth
        self._truth_rows = None if truth is None else {tuple(row): i for i, row in enumerate(truth.params.tolist())}
        self.cache = FrameCache(cache_bytes)
        self.stats = Stats()
        self.prefetch_batch = prefetch_batch or (decoder.batch_size if decoder.cuda else 1)
        self._training_rows = ({tuple(row) for row in decoder.grid().tolist()}
                               if decoder.meta.points is not None else None)
        self._lock = threading.Condition()
        self._jobs: dict[Key, _Job] = {}
        self._wanted: deque[Key] = deque()
        self._hinted: deque[Key] = deque()
        self._busy = False
        self._closed = False
        self._worker = threading.Thread(target=self._run, name=f"frames-{id(self):x}", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------------------------------
    # Public side

    def frame(self, row: Sequence[float], fmt: str = "png", layer: str = "image") -> tuple[Frame, bool]:
        """(frame, True when it came from the cache) for one parameter row; ParameterError for a
        row outside the trained range or an unknown format or layer."""
        key = self._key(row, fmt, layer)
        with self._lock:
            self.stats.requests += 1
            cached = self.cache.get(key)
            if cached is not None:
                self.stats.hits += 1
                return cached, True
            job = self._jobs.get(key)
            if job is None:  # else it is wanted already, being made, or only hinted so far
                job = self._jobs[key] = _Job()
                self._wanted.append(key)
            elif key in self._hinted:
                self._hinted.remove(key)
                self._wanted.append(key)
            self._lock.notify_all()
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.frame, False

    def prefetch(self, rows: Iterable[Sequence[float]], fmt: str = "png", layer: str = "image") -> None:
        """Make these frames in the background when nothing else waits (nearest first)."""
        keys = [self._key(row, fmt, layer) for row in rows]
        with self._lock:
            for key in keys:
                if key in self.cache or key in self._jobs:
                    continue
                self._jobs[key] = _Job()
                self._hinted.append(key)
            while len(self._hinted) > PREFETCH_QUEUE:
                self._jobs.pop(self._hinted.popleft(), None)
            self._lock.notify_all()

    def unseen(self, row: Sequence[float]) -> bool:
        """True where `row` is off the training set (decoded by interpolation); ParameterError
        where it is outside the trained range."""
        off_grid = bool(self.decoder.check(np.asarray([row], dtype=np.float64))[0])
        return off_grid or (self._training_rows is not None and tuple(row) not in self._training_rows)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until no request or prefetch is pending; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._wanted or self._hinted or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
        return True

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._worker.join(timeout=5)

    def _key(self, row: Sequence[float], fmt: str, layer: str) -> Key:
        if fmt not in FORMATS:
            raise ParameterError(f"format={fmt[:20]!r}: expected one of {', '.join(FORMATS)}")
        if layer not in LAYERS:
            raise ParameterError(f"layer={layer[:20]!r}: expected one of {', '.join(LAYERS)}")
        values = tuple(float(v) for v in row)
        self.unseen(values)  # range check in the caller's thread: its error is the caller's
        if layer in COMPARED and self._truth_rows is None:
            raise ParameterError(f"layer={layer}: no ground truth here (start the viewer with --store RENDERS)")
        if layer in COMPARED and values not in self._truth_rows:
            raise ParameterError(f"layer={layer}: no ground truth at {self.decoder.describe(values)} "
                                 f"(not one of the store's images)")
        return values, fmt, layer

    # ------------------------------------------------------------------------------------------
    # Worker side

    def _run(self) -> None:
        while True:
            with self._lock:
                while not (self._wanted or self._hinted or self._closed):
                    self._lock.wait()
                if self._closed:
                    for job in self._jobs.values():
                        job.error = RuntimeError("the viewer is shutting down")
                        job.done.set()
                    return
                keys, prefetching = self._take()
                self._busy = True
            try:
                made = self._make(keys)
                failure = None
            except Exception as e:  # a decode failure must reach the waiting requests, not kill the worker
                made, failure = {}, e
            with self._lock:
                self.stats.batches += 1
                self.stats.decoded += len(keys)
                if prefetching:
                    self.stats.prefetched += len(keys)
                for key in keys:
                    job = self._jobs.pop(key, None)
                    if key in made:
                        self.cache.put(key, made[key])
                    if job is not None:
                        job.frame, job.error = made.get(key), failure
                        job.done.set()
                self._busy = False
                self._lock.notify_all()

    def _take(self) -> tuple[list[Key], bool]:
        """The next batch: every waiting request (up to the batch size), else a few prefetches."""
        source, limit = ((self._wanted, self.decoder.batch_size) if self._wanted
                         else (self._hinted, self.prefetch_batch))
        keys: list[Key] = []
        while source and len(keys) < limit:
            key = source.popleft()
            if key not in keys:
                keys.append(key)
        return keys, source is self._hinted

    def _make(self, keys: list[Key]) -> dict[Key, Frame]:
        rows = list(dict.fromkeys(values for values, _, _ in keys))
        start = time.perf_counter()
        images, masks = self.decoder.decode_with_masks(np.asarray(rows, dtype=np.float64))
        decode_ms = 1000 * (time.perf_counter() - start) / len(rows)
        made = {}
        for values, fmt, layer in keys:
            start = time.perf_counter()
            i = rows.index(values)
            if layer in COMPARED:
                truth = self.truth.read([self._truth_rows[values]])[0][0]
                pixels = truth if layer == "truth" else colour_map(delta_e_uv(truth, images[i]) / DELTA_E_SCALE)
            else:
                pixels = images[i] if layer == "image" else np.repeat(masks[i][..., None] * 255, 3, axis=-1)
            data = encode_image(pixels, fmt)
            made[values, fmt, layer] = Frame(data=data, mime=FORMATS[fmt], decode_ms=decode_ms,
                                      encode_ms=1000 * (time.perf_counter() - start), batch=len(rows),
                                      unseen=self.unseen(values))
        return made


def neighbours(grids: Sequence[Sequence[float]], row: Sequence[float], *, play: int | None = None,
               active: int | None = None) -> list[tuple[float, ...]]:
    """Rows worth prefetching around `row`, likeliest first. While parameter `play` is played:
    the next PLAY_AHEAD grid values along it, wrapping round as the player does. Otherwise the
    grid values on either side of `row` along each parameter (the arrow keys' next stops), those
    of the `active` parameter (the one the arrow keys step) first."""
    row = tuple(float(v) for v in row)

    def moved(j: int, value: float) -> tuple[float, ...]:
        return row[:j] + (float(value),) + row[j + 1:]

    if play is not None:
        grid = grids[play]
        after = int(np.searchsorted(grid, row[play], side="right"))
        steps = min(PLAY_AHEAD, len(grid) - 1 if row[play] in grid else len(grid))
        return [moved(play, grid[(after + k) % len(grid)]) for k in range(steps)]
    axes = sorted(range(len(grids)), key=lambda j: j != active)
    found = []
    for j in axes:
        grid = grids[j]
        below = int(np.searchsorted(grid, row[j], side="left")) - 1
        above = int(np.searchsorted(grid, row[j], side="right"))
        found += [moved(j, grid[i]) for i in (below, above) if 0 <= i < len(grid)]
    return found
