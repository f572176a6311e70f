"""Standard codecs a user would pick instead of nervi-hpc, run over a renders store.

Each codec encodes the whole collection at one setting of its quality knob, decodes it back and
is measured as `nervi-hpc eval` measures an archive (same summary.json schema; its `archive`
object names the codec, setting and options instead of bits and parameters): video (h264, hevc,
av1: video.py), still images (avif, jpegxl, webp, jpeg: stills.py), SZ3 (sz3: sz3.py), and the
floor a model must clearly beat, the mean over φ (phi-mean: reference.py).

    from nervi_hpc.bench.baselines import codec, run
    run(codec("h264"), RenderStore.open("renders.zarr"), 30, "out/h264/crf-30")
"""

from __future__ import annotations

from ...errors import ConfigError
from . import reference, stills, sz3, video
from .base import Codec, Encoded, run, serpentine_order

CODECS: dict[str, Codec] = {c.name: c for c in (*video.CODECS, *stills.CODECS, sz3.Sz3(), *reference.CODECS)}

__all__ = ["CODECS", "Codec", "Encoded", "codec", "run", "serpentine_order"]


def codec(name: str) -> Codec:
    """The codec registered as `name`; ConfigError naming the known ones otherwise."""
    if name not in CODECS:
        raise ConfigError(f"unknown codec {name!r} (codecs: {', '.join(CODECS)})")
    return CODECS[name]
