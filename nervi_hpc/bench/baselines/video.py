"""Video codecs via PyAV (FFmpeg): H.264 (libx264), HEVC (libx265), AV1 (libsvtav1).

The collection becomes one video whose frames follow the serpentine walk of the parameter grid
(base.serpentine_order), so consecutive frames are neighbouring views and inter prediction works
as it would on a camera path. Frames are converted from RGB to full-range BT.709 YCbCr, 4:4:4 by
default where the encoder takes it (libx264 then uses the High 4:4:4 profile, libx265 Main 4:4:4):
4:2:0 halves the chroma resolution, which caps PSNR on sharp coloured edges. libsvtav1 takes only
4:2:0 (8 or 10 bit), so AV1 here is 4:2:0. Rate control is constant quality (CRF), the sweep's
knob. x264 and x265 get `tune psnr` (their psycho-visual defaults cost about 1 dB of PSNR at equal
size on the tornado renders; SVT-AV1 tunes for PSNR by default); every other setting is the
encoder's default (preset medium for x264/x265, 8 for SVT-AV1) unless the bench spec sets
`preset` (or `tune: null`). The encoded size is that of the raw elementary stream
(Annex B for H.264/HEVC, a Low Overhead Bitstream Format OBU stream for AV1), which decodes on
its own: no container overhead is counted.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal

import numpy as np

from ...data.store import RenderStore
from ...errors import ConfigError
from .base import Codec, Encoded, Stopwatch, batch_size, batched, read_batches, serpentine_order

os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 reads it when the library loads: errors only, no banner
import av  # noqa: E402  (after SVT_LOG)
from av.video.reformatter import ColorRange, Colorspace  # noqa: E402

FRAME_RATE = 25     # nominal: it sets nothing but the stream's time base
PIX_FMT = {"444": "yuv444p", "420": "yuv420p"}
COLOURS = {"colorspace": Colorspace.ITU709, "color_range": ColorRange.JPEG}


@dataclass(frozen=True)
class VideoOptions:
    """What a bench spec may set for H.264/HEVC: chroma sampling, the encoder preset (ultrafast …
    placebo; None: the encoder's default, medium) and tune (None: the encoder's default, which
    favours perceived quality over PSNR)."""

    chroma: Literal["444", "420"] = "444"
    preset: str | None = None
    tune: str | None = "psnr"


@dataclass(frozen=True)
class Av1Options:
    """What a bench spec may set for AV1: the SVT-AV1 preset (0 slowest … 13 fastest; None: 8).
    libsvtav1 encodes 4:2:0 only, and tunes for PSNR by default."""

    chroma: Literal["420"] = "420"
    preset: int | None = None


@dataclass(frozen=True)
class VideoCodec(Codec):
    name: str
    encoder: str
    muxer: str                                   # FFmpeg's raw elementary-stream muxer
    sweep: tuple[float, ...]
    Options: type
    thread_options: Callable[[int], dict[str, str]]  # encoder options that limit its threads
    knob: str = "crf"

    def encoder_options(self, value: float, options, threads: int) -> dict[str, str]:
        chosen = {"crf": f"{value:g}", **self.thread_options(threads)}
        for key in ("preset", "tune"):
            if getattr(options, key, None) is not None:
                chosen[key] = str(getattr(options, key))
        return chosen

    def describe(self, value: float, options) -> dict[str, Any]:
        return {"crf": value, "pix_fmt": PIX_FMT[options.chroma], "preset": options.preset or "default",
                "tune": getattr(options, "tune", "psnr") or "default",  # SVT-AV1: PSNR by default
                "order": "serpentine",
                "colour": "BT.709 full range", "stream": self.muxer}

    def precision(self, options) -> str:
        return f"8-bit YCbCr {options.chroma[0]}:{options.chroma[1]}:{options.chroma[2]}"

    def encode(self, store: RenderStore, value: float, options, threads: int) -> "EncodedVideo":
        if options.chroma == "420" and (store.height % 2 or store.width % 2):
            raise ConfigError(f"{self.name}: 4:2:0 video needs an even image size; {store.path} holds "
                              f"{store.width}×{store.height} images (use chroma 444 where the encoder has it)")
        pix_fmt = PIX_FMT[options.chroma]
        order = serpentine_order(store)
        buffer, clock = io.BytesIO(), Stopwatch()
        with av.open(buffer, mode="w", format=self.muxer) as container:
            stream = container.add_stream(self.encoder, rate=FRAME_RATE)
            stream.width, stream.height, stream.pix_fmt = store.width, store.height, pix_fmt
            stream.codec_context.colorspace = COLOURS["colorspace"]
            stream.codec_context.color_range = COLOURS["color_range"]
            stream.options = self.encoder_options(value, options, threads)
            for _, images in read_batches(store, order):
                with clock:
                    for image in images:
                        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(
                            format=pix_fmt, dst_colorspace=COLOURS["colorspace"],
                            dst_color_range=COLOURS["color_range"])
                        container.mux(stream.encode(frame))
            with clock:
                container.mux(stream.encode())
        return EncodedVideo(buffer.getvalue(), self.muxer, order, threads, batch_size(store), clock.seconds)


class EncodedVideo(Encoded):
    def __init__(self, data: bytes, muxer: str, order: np.ndarray, threads: int, measure_batch: int,
                 encode_seconds: float):
        self.data, self.muxer, self.order, self.threads = data, muxer, order, threads
        self.measure_batch = measure_batch
        self.nbytes, self.encode_seconds, self.batch_size = len(data), encode_seconds, 1

    def decode(self, wanted: set[int] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return batched(self._frames(wanted), self.measure_batch)

    def _frames(self, wanted: set[int] | None) -> Iterator[tuple[int, np.ndarray]]:
        count = 0
        with av.open(io.BytesIO(self.data), format=self.muxer) as container:
            stream = container.streams.video[0]
            stream.thread_count = self.threads
            for frame in container.decode(stream):
                if count >= len(self.order):
                    break
                index = int(self.order[count])
                count += 1
                if wanted is None or index in wanted:
                    rgb = frame.reformat(format="rgb24", src_colorspace=COLOURS["colorspace"],
                                         src_color_range=COLOURS["color_range"])
                    yield index, rgb.to_ndarray()
        if count != len(self.order):  # the encoder lost frames: a codec failure, not user input
            raise RuntimeError(f"{self.muxer} stream decoded to {count} frames, expected {len(self.order)}")


def _x265_threads(threads: int) -> dict[str, str]:
    return {"x265-params": f"pools={threads}:frame-threads={min(threads, 4)}:log-level=error"}


CODECS = (
    VideoCodec("h264", "libx264", "h264", (6, 12, 18, 24, 30, 36, 42, 51), VideoOptions,
               lambda threads: {"threads": str(threads)}),
    VideoCodec("hevc", "libx265", "hevc", (6, 12, 18, 24, 30, 36, 42, 51), VideoOptions, _x265_threads),
    VideoCodec("av1", "libsvtav1", "obu", (8, 16, 24, 32, 40, 48, 56, 63), Av1Options,
               lambda threads: {"svtav1-params": f"lp={threads}"}),
)
