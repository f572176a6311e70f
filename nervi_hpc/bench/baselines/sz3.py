"""SZ3 (pysz), the error-bounded lossy compressor of scientific data, on the image stack.

Images in the serpentine order of the parameter grid (base.serpentine_order) form float32
arrays (n, H, W, 3) with values pixel/255; SZ3 compresses each with an absolute error bound
(the sweep's knob, in units of the full 0..1 range) and the decoded values are rounded back to
uint8. The stack is cut into chunks of `chunk` images (default: about 64 MB of float32 each) so
that memory stays bounded on large collections; each chunk is one SZ3 stream with its own
header, all counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
from pysz import sz, szConfig, szErrorBoundMode

from ...data.store import RenderStore
from .base import Codec, Encoded, Stopwatch, read_batches, serpentine_order

CHUNK_BYTES = 64 << 20


@dataclass(frozen=True)
class Sz3Options:
    """SZ3: images per SZ3 stream (None: about 64 MB of float32)."""

    chunk: int | None = None


class Sz3(Codec):
    name, encoder, knob, Options = "sz3", "SZ3 (pysz)", "eb", Sz3Options
    sweep = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)

    def describe(self, value: float, options) -> dict[str, Any]:
        return {"abs_error_bound": value, "chunk": options.chunk or "auto", "order": "serpentine",
                "layout": "float32 (n, H, W, 3) / 255"}

    def precision(self, options) -> str:
        return "float32"

    def encode(self, store: RenderStore, value: float, options, threads: int) -> "EncodedSz3":
        chunk = options.chunk or max(1, CHUNK_BYTES // (store.height * store.width * 3 * 4))
        order = serpentine_order(store)
        streams, clock = [], Stopwatch()
        for start in range(0, store.count, chunk):
            indices = order[start:start + chunk]
            images = np.concatenate([images for _, images in read_batches(store, indices)])
            with clock:
                values = images.astype(np.float32) / 255
                config = szConfig(values.shape)
                config.errorBoundMode = szErrorBoundMode.ABS
                config.absErrorBound = value
                compressed, _ = sz.compress(values, config)
            streams.append((indices, compressed.tobytes()))
            del images, values
        return EncodedSz3(streams, (store.height, store.width, 3), chunk, clock.seconds)


class EncodedSz3(Encoded):
    def __init__(self, streams: list[tuple[np.ndarray, bytes]], shape: tuple[int, int, int], chunk: int,
                 encode_seconds: float):
        self.streams, self.shape = streams, shape
        self.nbytes = sum(len(data) for _, data in streams)
        self.encode_seconds, self.batch_size = encode_seconds, chunk

    def decode(self, wanted: set[int] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for indices, data in self.streams:
            if wanted is not None and not wanted.intersection(indices.tolist()):
                continue
            values, _ = sz.decompress(np.frombuffer(data, np.uint8), np.float32, (len(indices), *self.shape))
            images = np.clip(np.rint(values * 255), 0, 255).astype(np.uint8)
            yield indices, images
