"""Decode figures: images/s by batch size, archive size by quantization bits, PSNR vs bits.

    python benchmarks/decode.py                      # everything, a few minutes on 2 CPU cores
    python benchmarks/decode.py --parts speed256 --device cuda --batch-sizes 1 8 32 128
    python benchmarks/decode.py --parts curve --train-minutes 3

Parts:
  speed256   decode img/s at 256² of the CR ≈ 300 model for 800 images (c1 16, c2 64, min_channels 4:
             ~476 k parameters), untrained weights (speed does not depend on them)
  speed1024  the same at 1024² for the paper's model (c1 128, c2 1024: ~101 M parameters), few images
  bits       archive size at 6–12 bits of the 256² model: bytes, bits/parameter, CR for 800 × 256²
  curve      a small model trained on the synthetic tornado (64², 100 views), archived at 2–12 bits
             through nervi_hpc.stages.compress: PSNR of each archive against the store, and of the float
             model (the paper's Fig. 4: flat from about 9 bits)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nervi_hpc.codec.archive import compression_ratio, write_archive
from nervi_hpc.codec.header import ArchiveMeta, Parameter
from nervi_hpc.codec.quantize import quantize
from nervi_hpc.config import DatasetSpec
from nervi_hpc.data.sources import open_source
from nervi_hpc.data.store import RenderStore
from nervi_hpc.model import checkpoint
from nervi_hpc.model.loss import psnr
from nervi_hpc.model.network import NeRVI, count_parameters
from nervi_hpc.model.sizing import model_config
from nervi_hpc.model.spec import ModelSpec
from nervi_hpc.schema import build
from nervi_hpc.stages.compress import archive_meta, compress
from nervi_hpc.stages.decode.decoder import Decoder, build_model
from nervi_hpc.stages.ingest.run import ingest
from nervi_hpc.stages.train import train

VIEWS = 800  # the paper's viewpoint grid: theta 0…171, phi 0…351, 9° steps
CR300_MODEL = {"preset": "paper", "c1": 16, "c2": 64, "min_channels": 4}
PAPER_MODEL = {"preset": "paper"}


def paper_grid_meta(size: int, model: dict) -> ArchiveMeta:
    """Metadata of a model for the paper's 800 views of size², as an archive would carry it."""
    theta, phi = tuple(float(v) for v in range(0, 172, 9)), tuple(float(v) for v in range(0, 352, 9))
    parameters = (Parameter("t", 0.0, 0.0, (0.0,)), Parameter("theta", 0.0, 171.0, theta),
                  Parameter("phi", 0.0, 351.0, phi))
    return ArchiveMeta(model=model_config(ModelSpec.parse(model), size, size), parameters=parameters, height=size, width=size,
                       background=(255, 255, 255), mode="ir", count=VIEWS, bits=9)


def untrained_decoder(size: int, model: dict, device: str) -> Decoder:
    torch.manual_seed(0)
    meta = paper_grid_meta(size, model)
    return Decoder(NeRVI(meta.model, size, size, 3), meta, device=device)


def speed(size: int, model: dict, batch_sizes: list[int], images: int, device: str) -> None:
    decoder = untrained_decoder(size, model, device)
    grid = decoder.grid()
    print(f"\n## decode speed at {size}², model {model} ({count_parameters(decoder.model):,} parameters), "
          f"{device}, {torch.get_num_threads()} threads")
    print("| batch | images | seconds | img/s |\n|---|---|---|---|")
    for batch in batch_sizes:
        decoder.batch_size = batch
        decoder.decode(grid[:batch])  # warm-up: allocator, kernels
        count = max(images, batch)
        rows = grid[np.arange(count) % len(grid)]
        if decoder.cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        decoder.decode(rows)  # returns host arrays: every batch is finished
        seconds = time.perf_counter() - start
        print(f"| {batch} | {count} | {seconds:.2f} | {count / seconds:.1f} |")


def rate(bit_depths: list[int]) -> None:
    torch.manual_seed(0)
    meta = paper_grid_meta(256, CR300_MODEL)
    state = NeRVI(meta.model, 256, 256, 3).state_dict()
    print(f"\n## archive size of the 256² CR ≈ 300 model (untrained SIREN/conv initialisation; "
          f"{VIEWS} images of 256² are {VIEWS * 256 * 256 * 3:,} raw bytes)")
    print("| bits | archive bytes | bits/parameter | CR |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for bits in bit_depths:
            q = quantize(state, bits)
            size = write_archive(Path(tmp) / "m.nervi", q, meta.to_json())
            print(f"| {bits} | {size:,} | {q.bits_per_parameter(size):.2f} | "
                  f"{compression_ratio(VIEWS, 256, 256, size):.0f} |")


def curve(bit_depths: list[int], minutes: float, root: Path) -> None:
    spec = build(DatasetSpec, {
        "name": "tornado64", "source": {"kind": "synthetic", "scene": "tornado", "size": 64, "t": 0,
                                        "theta": {"start": 0, "stop": 171, "step": 19},
                                        "phi": {"start": 0, "stop": 351, "step": 36}},
        "model": {"c1": 16, "c2": 64, "min_channels": 8},
        "train": {"epochs": 100000, "batch_size": 8, "loader_workers": 0, "lr": 1e-3}})
    run = root / "run"
    ingest(open_source(spec.source), run / "renders.zarr", workers=1, progress=False)
    store = RenderStore.open(run / "renders.zarr")
    result = train(run, spec, max_minutes=minutes, progress=False)
    print(f"\n## PSNR vs quantization bits: {store.count} tornado views of 64², model {spec.model}, "
          f"trained {result.seconds / 60:.1f} min ({result.epochs} epochs)")
    truth, _ = store.read(range(store.count))

    def store_psnr(decoder: Decoder) -> float:
        decoded = decoder.decode(store.params)
        return psnr(torch.from_numpy(decoded).double() / 255, torch.from_numpy(truth).double() / 255).item()

    state, config = checkpoint.load(checkpoint.latest(run / "checkpoints"))
    meta = archive_meta(state, config, "float", store, 32, {})
    float_psnr = store_psnr(Decoder(build_model(meta, state["model"]), meta, device="cpu"))
    print("| bits | archive bytes | bits/parameter | CR | PSNR dB | Δ vs float dB |\n|---|---|---|---|---|---|")
    for bits in bit_depths:
        archived = compress(run, bits=bits, name=f"b{bits}", evaluate=False)
        value = store_psnr(Decoder.open(archived.archive, device="cpu"))
        print(f"| {bits} | {archived.bytes:,} | {archived.bits_per_parameter:.2f} | "
              f"{archived.compression_ratio:.1f} | {value:.2f} | {value - float_psnr:+.3f} |")
    print(f"| float32 | | 32 | | {float_psnr:.2f} | 0 |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["speed256", "speed1024", "bits", "curve"],
                        choices=["speed256", "speed1024", "bits", "curve"])
    parser.add_argument("--device", default="cpu", help="cpu or cuda for the speed parts")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--batch-sizes-1024", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--images", type=int, default=128, help="images timed per batch size at 256²")
    parser.add_argument("--images-1024", type=int, default=4, help="images timed per batch size at 1024²")
    parser.add_argument("--bits", type=int, nargs="+", default=list(range(6, 13)))
    parser.add_argument("--curve-bits", type=int, nargs="+", default=[2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
    parser.add_argument("--train-minutes", type=float, default=2.0)
    args = parser.parse_args()
    if "speed256" in args.parts:
        speed(256, CR300_MODEL, args.batch_sizes, args.images, args.device)
    if "speed1024" in args.parts:
        speed(1024, PAPER_MODEL, args.batch_sizes_1024, args.images_1024, args.device)
    if "bits" in args.parts:
        rate(args.bits)
    if "curve" in args.parts:
        with tempfile.TemporaryDirectory() as tmp:
            curve(args.curve_bits, args.train_minutes, Path(tmp))


if __name__ == "__main__":
    main()
