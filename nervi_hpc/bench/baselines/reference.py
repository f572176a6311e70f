"""A floor rather than a codec: `phi-mean`, the mean over φ of each group of views that share
every other parameter (the per-θ mean image of a one-time-step collection), stored as lossless
PNGs. It is what a model that ignores φ entirely can reach; a learned model that is not clearly
above it has learned nothing about the view around the axis (issue 12 measured the default 0.3 dB
above it after 50 epochs on a Cinema database)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import imagecodecs
import numpy as np

from ...data.store import RenderStore
from ...errors import ConfigError
from .base import Codec, Encoded, Stopwatch, batch_size, batched, read_batches

AVERAGED = "phi"  # the parameter averaged over


@dataclass(frozen=True)
class PhiMeanOptions:
    """phi-mean has no options."""


class PhiMean(Codec):
    name, Options = "phi-mean", PhiMeanOptions
    encoder = f"mean over {AVERAGED}, {imagecodecs.png_version()}"
    knob = "mean"
    sweep = (0.0,)   # one point: there is no quality knob

    def setting(self, value: float) -> str:
        return "mean"

    def describe(self, value: float, options) -> dict[str, Any]:
        return {"averaged": AVERAGED, "files": "one lossless PNG per group of views"}

    def precision(self, options) -> str:
        return "8-bit RGB (mean rounded)"

    def encode(self, store: RenderStore, value: float, options, threads: int) -> "EncodedMeans":
        if AVERAGED not in store.param_names:
            raise ConfigError(f"phi-mean: the store {store.path} has no {AVERAGED} parameter "
                              f"(parameters: {', '.join(store.param_names)})")
        others = [p for p, name in enumerate(store.param_names) if name != AVERAGED]
        keys = [tuple(row) for row in store.params[:, others].tolist()]
        groups = {key: g for g, key in enumerate(dict.fromkeys(keys))}
        group_of = np.array([groups[key] for key in keys])
        sums = np.zeros((len(groups), store.height, store.width, 3), np.float64)
        clock = Stopwatch()
        for indices, images in read_batches(store, np.arange(store.count)):
            with clock:
                np.add.at(sums, group_of[indices], images)
        with clock:
            counts = np.bincount(group_of, minlength=len(groups))[:, None, None, None]
            means = np.clip(np.rint(sums / counts), 0, 255).astype(np.uint8)
            files = [bytes(imagecodecs.png_encode(mean)) for mean in means]
        return EncodedMeans(files, group_of, batch_size(store), clock.seconds)


class EncodedMeans(Encoded):
    def __init__(self, files: list[bytes], group_of: np.ndarray, measure_batch: int, encode_seconds: float):
        self.files, self.group_of, self.measure_batch = files, group_of, measure_batch
        self.nbytes, self.encode_seconds, self.batch_size = sum(map(len, files)), encode_seconds, 1

    def decode(self, wanted: set[int] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        means = [imagecodecs.png_decode(data) for data in self.files]
        pairs = ((i, means[g]) for i, g in enumerate(self.group_of.tolist()) if wanted is None or i in wanted)
        return batched(pairs, self.measure_batch)


CODECS = (PhiMean(),)
