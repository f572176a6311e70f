"""Decoded images written out: an image file, a folder of PNGs, a `.zarr` renders store (through
the ingest stage, as an `ArchiveSource`) or a Cinema database."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ...data.imaging import write_jpeg, write_png
from ...data.sources import Source
from ...errors import ParameterError
from ...parameters import png_name
from ...progress import progress_bar
from .decoder import Decoder



@dataclass
class ArchiveSource(Source):
    """Decoded images of an archive as a Source, so that nervi_hpc.stages.ingest writes them as a
    renders store (same schema, sharding, atomic finish). The images are passed composited, so
    the store's mask is where a decoded pixel differs from the background."""

    decoder: Decoder = field(default=None, repr=False, compare=False)
    alpha: bool = False  # pass the decoded mask as alpha (RGBA images)

    @classmethod
    def of(cls, decoder: Decoder, params: np.ndarray, description: str, alpha: bool = False) -> ArchiveSource:
        meta = decoder.meta
        return cls(names=meta.names, params=np.asarray(params, dtype=np.float64), size=(meta.height, meta.width),
                   mode=meta.mode, background=meta.background, mask_tolerance=0, description=description,
                   decoder=decoder, alpha=alpha)

    def read(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray | None]:
        images, masks = self.decoder.decode_with_masks(self.params[list(indices)])
        return images, masks * 255 if self.alpha else None


IMAGE_WRITERS = {".png": write_png, ".jpg": write_jpeg, ".jpeg": write_jpeg}


def write_outputs(decoder: Decoder, params: np.ndarray, out: str | os.PathLike, *,
                  archive: str | os.PathLike = "", progress: bool = True, rgba: bool = False) -> str:
    """Decode `params` into `out`: a `.png` or `.jpg` file (one row), a `.zarr` renders store, a
    `.cdb` Cinema database (data.csv + PNGs; RGBA with the decoded mask as alpha when `rgba`),
    or else a folder of PNGs named from the parameters. Another image suffix is refused rather
    than made a folder. Returns a one-line account of what was written."""
    from PIL import Image

    out = Path(out)
    params = np.asarray(params, dtype=np.float64)
    suffix = out.suffix.lower()
    described = f"decoded from {Path(archive).name or 'an archive'}"
    if suffix == ".zarr":
        from ..ingest.run import ingest  # heavy (multiprocessing, rich): only for this output

        result = ingest(ArchiveSource.of(decoder, params, described), out, workers=1, progress=progress)
        return f"wrote {result.count} decoded images to the renders store {out}"
    if suffix == ".cdb":
        from ...data.sources.cinema import write_cinema

        decoder.check(params)  # one clear error before any image is written
        write_cinema(ArchiveSource.of(decoder, params, described, alpha=rgba), out, progress=progress)
        return f"wrote a Cinema database of {len(params)} {'RGBA' * rgba or 'RGB'} images to {out} (data.csv)"
    if suffix in IMAGE_WRITERS:
        if len(params) != 1:
            raise ParameterError(f"-o {out}: one image file holds one image, but {len(params)} were asked "
                                 f"for; give a folder, a .cdb Cinema database or a .zarr store")
        if rgba and suffix != ".png":
            raise ParameterError(f"-o {out}: JPEG has no alpha channel; --rgba needs a .png")
        images, masks = decoder.decode_with_masks(params)
        if rgba:
            write_png(out, images[0], masks[0] * 255)
        else:
            IMAGE_WRITERS[suffix](out, images[0])
        return f"wrote {out}"
    if suffix in Image.registered_extensions():
        raise ParameterError(f"-o {out}: decode writes .png or .jpg images, a .cdb Cinema database, "
                             f"a .zarr store or a folder, not {suffix} files")
    names = [png_name(decoder.names, row) for row in params]
    if len(set(names)) != len(names):
        raise ParameterError(f"-o {out}: the parameter list repeats a row ({_first_repeat(names)})")
    out.mkdir(parents=True, exist_ok=True)
    with progress_bar(progress) as bar:
        task = bar.add_task(f"decode → {out}", total=len(params))
        for start, images, masks in decoder.batches(params):
            for k, image in enumerate(images):
                write_png(out / names[start + k], image, masks[k] * 255 if rgba else None)
            bar.advance(task, len(images))
    return f"wrote {len(params)} PNG images to {out}"


def _first_repeat(names: list[str]) -> str:
    seen = set()
    return next(n for n in names if n in seen or seen.add(n))
