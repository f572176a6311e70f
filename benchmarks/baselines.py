"""Baseline codecs at a mid setting: encode and decode speed, CR and PSNR on one store.

    python benchmarks/baselines.py                          # renders jobs/examples/tornado-ir.yaml first (800 × 256²)
    python benchmarks/baselines.py path/to/renders.zarr --codecs h264 av1 --threads 2

For each codec (nervi_hpc.bench.baselines) at the middle value of its default sweep: the whole store is
encoded in memory and decoded back; encode and decode rates count only the codec's own work
(store reads excluded); PSNR is the mean over images of whole-image PSNR (8-bit RGB), as in
summary.json. The full measurement (MS-SSIM, foreground PSNR, report) is `nervi-hpc bench`.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from nervi_hpc.bench.baselines import CODECS
from nervi_hpc.bench.baselines.base import Stopwatch, default_threads, timed
from nervi_hpc.config import load_dataset
from nervi_hpc.data.sources import open_source
from nervi_hpc.data.store import RenderStore
from nervi_hpc.stages.ingest.run import ingest

DEFAULT_DATASET = Path(__file__).resolve().parent.parent / "jobs" / "examples" / "tornado-ir.yaml"


def mean_psnr(store: RenderStore, decoded, clock: Stopwatch) -> float:
    """Mean per-image PSNR of the decoded batches; the time spent decoding is added to `clock`."""
    values = []
    for indices, images in timed(decoded, clock):
        truth, _ = store.read(indices.tolist())
        mse = ((truth.astype(np.float64) - images) ** 2).mean(axis=(1, 2, 3))
        values.extend(10 * np.log10(255 ** 2 / np.maximum(mse, 1e-12)))
    return float(np.mean(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", nargs="?", help="a renders.zarr (default: render the tornado IR example)")
    parser.add_argument("--codecs", nargs="+", choices=list(CODECS), default=list(CODECS))
    parser.add_argument("--threads", type=int, default=default_threads(), help="codec threads (default: torch's)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.store
        if path is None:
            path = Path(tmp) / "renders.zarr"
            ingest(open_source(load_dataset(DEFAULT_DATASET).source), path, progress=False)
        store = RenderStore.open(path)
        print(f"{store.count} images {store.width}×{store.height} from {path}, {args.threads} codec thread(s)")
        print(f"{'codec':8} {'setting':9} {'encoder':26} {'CR':>8} {'PSNR dB':>8} {'enc img/s':>10} {'dec img/s':>10}")
        for name in args.codecs:
            codec = CODECS[name]
            value = codec.sweep[len(codec.sweep) // 2]
            encoded = codec.encode(store, value, codec.Options(), args.threads)
            decode_clock = Stopwatch()
            psnr = mean_psnr(store, encoded.decode(), decode_clock)
            cr = store.count * store.height * store.width * 3 / encoded.nbytes
            print(f"{name:8} {codec.setting(value):9} {codec.encoder:26} {cr:8.1f} {psnr:8.2f} "
                  f"{store.count / encoded.encode_seconds:10.1f} {store.count / decode_clock.seconds:10.1f}", flush=True)


if __name__ == "__main__":
    main()
