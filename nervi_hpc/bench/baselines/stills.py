"""Still-image codecs via imagecodecs: AVIF (libavif + libaom), JPEG XL (libjxl), WebP (libwebp,
lossy) and JPEG (libjpeg-turbo). Each image is its own file; the collection's size is the sum of
the files. The knob is each library's 0–100 quality `level`; other settings are the library's
defaults except where noted in the options (AVIF speed 6, avifenc's default, since libavif's own
default is ~30× slower; JPEG with optimised Huffman tables, as `cjpeg -optimize`).
Chroma: AVIF 4:4:4 by default (libavif's default), JPEG 4:2:0 by default (libjpeg's default),
both settable; WebP lossy is always 4:2:0; JPEG XL codes XYB, without subsampling.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Iterator, Literal

import imagecodecs
import numpy as np

from ...data.store import RenderStore
from .base import Codec, Encoded, Stopwatch, batch_size, batched, read_batches


@dataclass(frozen=True)
class AvifOptions:
    """AVIF: chroma sampling and libaom speed (0 slowest … 10 fastest)."""

    chroma: Literal["444", "420"] = "444"
    speed: int = 6


@dataclass(frozen=True)
class JpegXlOptions:
    """JPEG XL: libjxl effort (1 fastest … 9 slowest; None: its default, 7)."""

    effort: int | None = None


@dataclass(frozen=True)
class WebpOptions:
    """WebP (lossy): libwebp method (0 fastest … 6 slowest; None: its default, 4)."""

    method: int | None = None


@dataclass(frozen=True)
class JpegOptions:
    """JPEG: chroma sampling and Huffman table optimisation."""

    chroma: Literal["444", "420"] = "420"
    optimize: bool = True


AVIF_PIXEL_FORMAT = {"444": imagecodecs.AVIF.PIXEL_FORMAT.YUV444, "420": imagecodecs.AVIF.PIXEL_FORMAT.YUV420}


class StillCodec(Codec):
    """A codec of single images: `arguments` are its encoder's keyword arguments besides the
    quality level; `decompress` decodes one file."""

    knob = "q"

    @abc.abstractmethod
    def arguments(self, options, threads: int) -> dict[str, Any]: ...

    @abc.abstractmethod
    def compress(self, image: np.ndarray, level: float, arguments: dict[str, Any]) -> bytes: ...

    @abc.abstractmethod
    def decompress(self, data: bytes, threads: int) -> np.ndarray: ...

    def describe(self, value: float, options) -> dict[str, Any]:
        arguments = {k: getattr(v, "name", v) for k, v in self.arguments(options, 1).items() if k != "numthreads"}
        return {"quality": value, **arguments, "files": "one per image"}

    def encode(self, store: RenderStore, value: float, options, threads: int) -> "EncodedStills":
        arguments = self.arguments(options, threads)
        files: list[bytes] = [b""] * store.count
        clock = Stopwatch()
        for indices, images in read_batches(store, np.arange(store.count)):
            with clock:
                for index, image in zip(indices.tolist(), images):
                    files[index] = bytes(self.compress(image, value, arguments))
        return EncodedStills(self, files, threads, batch_size(store), clock.seconds)


class EncodedStills(Encoded):
    def __init__(self, codec: StillCodec, files: list[bytes], threads: int, measure_batch: int,
                 encode_seconds: float):
        self.codec, self.files, self.threads, self.measure_batch = codec, files, threads, measure_batch
        self.nbytes, self.encode_seconds, self.batch_size = sum(map(len, files)), encode_seconds, 1

    def decode(self, wanted: set[int] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        pairs = ((i, self.codec.decompress(data, self.threads)) for i, data in enumerate(self.files)
                 if wanted is None or i in wanted)
        return batched(pairs, self.measure_batch)


def _chroma(chroma: str) -> str:
    return f"8-bit YCbCr {chroma[0]}:{chroma[1]}:{chroma[2]}"


class Avif(StillCodec):
    name, Options = "avif", AvifOptions
    encoder = f"{imagecodecs.avif_version()} (aom)"
    sweep = (90, 75, 60, 45, 30, 15, 0)

    def arguments(self, options, threads):
        return {"speed": options.speed, "pixelformat": AVIF_PIXEL_FORMAT[options.chroma], "numthreads": threads}

    def compress(self, image, level, arguments):
        return imagecodecs.avif_encode(image, level=level, **arguments)

    def decompress(self, data, threads):
        return imagecodecs.avif_decode(data, numthreads=threads)

    def precision(self, options):
        return _chroma(options.chroma)


class JpegXl(StillCodec):
    name, Options = "jpegxl", JpegXlOptions
    encoder = imagecodecs.jpegxl_version()
    sweep = (95, 85, 70, 55, 40, 25, 10)

    def arguments(self, options, threads):
        return {"effort": options.effort, "numthreads": threads}

    def compress(self, image, level, arguments):
        return imagecodecs.jpegxl_encode(image, level=level, **arguments)

    def decompress(self, data, threads):
        return imagecodecs.jpegxl_decode(data, numthreads=threads)

    def precision(self, options):
        return "XYB (VarDCT)"


class Webp(StillCodec):
    name, Options = "webp", WebpOptions
    encoder = imagecodecs.webp_version()
    sweep = (95, 80, 60, 40, 20, 5, 0)

    def arguments(self, options, threads):
        return {"lossless": False, "method": options.method}

    def compress(self, image, level, arguments):
        return imagecodecs.webp_encode(image, level=level, **arguments)

    def decompress(self, data, threads):
        return imagecodecs.webp_decode(data)

    def precision(self, options):
        return _chroma("420")


class Jpeg(StillCodec):
    name, Options = "jpeg", JpegOptions
    encoder = imagecodecs.jpeg8_version()
    sweep = (95, 80, 60, 40, 20, 10, 1)

    def arguments(self, options, threads):
        return {"subsampling": options.chroma, "optimize": options.optimize}

    def compress(self, image, level, arguments):
        return imagecodecs.jpeg8_encode(image, level=level, **arguments)

    def decompress(self, data, threads):
        return imagecodecs.jpeg8_decode(data)

    def precision(self, options):
        return _chroma(options.chroma)


CODECS = (Avif(), JpegXl(), Webp(), Jpeg())
