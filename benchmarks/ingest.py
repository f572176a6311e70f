"""Ingest speed: PNG folder → renders.zarr with 1 and 2 workers, next to the PNG-decode bound.

    python benchmarks/ingest.py                          # 2,000 PNGs of 256² and 200 of 1024²
    python benchmarks/ingest.py --sets 500x256 --workers 1 2 4 --dir /scratch/bench

Render-like PNGs (shaded spheres and a ring on white, the light moving with theta/phi) are written
once into a folder (a temporary one unless --dir is given; an existing --dir is reused) and read
through nervi_hpc.data.sources.folder.ImageFolder. For each set it prints images/s and MB/s of raw
pixels (N·H·W·3) for the ingest and for merely decoding the same PNGs with PIL in as many
processes, the store's size, and how fast the store reads back (in order, and in random batches).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from nervi_hpc.data.sources.folder import ImageFolder
from nervi_hpc.data.store import RenderStore
from nervi_hpc.stages.ingest.run import ingest

PATTERN = "theta{theta}_phi{phi}.png"


def render_like(size: int, theta: float, phi: float) -> np.ndarray:
    """A smooth shaded scene on white: two Lambert-shaded spheres and a ring, anti-aliased."""
    y, x = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size * 2 - 1
    t, p = np.radians(theta), np.radians(phi)
    light = np.array([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t) + 1.2], np.float32)
    light /= np.linalg.norm(light)
    image = np.ones((size, size, 3), np.float32)
    shapes = [((-0.3, -0.2), 0.45, (0.85, 0.35, 0.2)), ((0.35, 0.3), 0.35, (0.2, 0.5, 0.85))]
    for (cx, cy), radius, colour in shapes:
        dx, dy = (x - cx) / radius, (y - cy) / radius
        r2 = dx * dx + dy * dy
        dz = np.sqrt(np.clip(1 - r2, 0, 1))
        shade = np.clip(dx * light[0] + dy * light[1] + dz * light[2], 0, 1) * 0.85 + 0.15
        coverage = np.clip((1 - np.sqrt(r2)) * radius * size / 2, 0, 1)[..., None]
        image = image * (1 - coverage) + coverage * shade[..., None] * np.asarray(colour, np.float32)
    ring = np.abs(np.hypot(x - 0.1, y + 0.55) - 0.25)
    coverage = np.clip((0.05 - ring) * size / 2, 0, 1)[..., None] * (0.6 + 0.4 * np.cos(p))
    image = image * (1 - coverage) + coverage * np.asarray((0.3, 0.7, 0.3), np.float32)
    return (image * 255 + 0.5).astype(np.uint8)


def write_set(folder: Path, count: int, size: int) -> None:
    """`count` PNGs of size² on a theta × phi grid, unless the folder already holds them."""
    done = folder / ".complete"
    if done.exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    columns = int(np.ceil(np.sqrt(count * 2)))
    for k in range(count):
        theta, phi = 180.0 * (k // columns + 0.5) / (count / columns + 1), 360.0 * (k % columns) / columns
        Image.fromarray(render_like(size, theta, phi)).save(folder / f"theta{theta:.4f}_phi{phi:.4f}.png")
    done.touch()


def decode(paths: list[str]) -> int:
    for path in paths:
        with Image.open(path) as im:
            im.load()
    return len(paths)


def decode_seconds(paths: list[str], workers: int) -> float:
    """Seconds to decode every PNG with PIL in `workers` spawned processes (pool start included,
    as it is in the ingest)."""
    started = time.perf_counter()
    if workers == 1:
        decode(paths)
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(decode, [paths[k::workers] for k in range(workers)]))
    return time.perf_counter() - started


def read_back(path: Path, image_bytes: float) -> None:
    """Read speed of the store (images + masks): in order, and in random batches of 64."""
    store = RenderStore.open(path)
    started = time.perf_counter()
    for start in range(0, len(store), store.shard_size):
        store.read(range(start, min(start + store.shard_size, len(store))))
    sequential = time.perf_counter() - started
    order = np.random.default_rng(0).permutation(len(store))
    started = time.perf_counter()
    for start in range(0, len(store), 64):
        store.read(order[start:start + 64])
    shuffled = time.perf_counter() - started
    print(f"       read   {rate(len(store), image_bytes * len(store), sequential)}  in order;  "
          f"{rate(len(store), image_bytes * len(store), shuffled)}  random batches of 64")


def rate(count: int, raw_bytes: float, seconds: float) -> str:
    return f"{count / seconds:8.1f} img/s {raw_bytes / seconds / 1e6:8.1f} MB/s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["2000x256", "200x1024"], help="COUNTxSIZE ...")
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--dir", help="folder for the PNGs and stores (kept; default: a temporary one)")
    args = parser.parse_args()

    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="nervi-bench-ingest-"))
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start")
    try:
        for spec in args.sets:
            count, size = map(int, spec.split("x"))
            folder = root / f"png-{count}x{size}"
            started = time.perf_counter()
            write_set(folder, count, size)
            source = ImageFolder.open(folder, PATTERN)
            paths = list(source.files)
            raw = count * size * size * 3
            png_bytes = sum(Path(p).stat().st_size for p in paths)
            print(f"\n{count} PNGs of {size}² ({raw / 1e6:.0f} MB raw pixels, {png_bytes / 1e6:.0f} MB of PNG; "
                  f"ready in {time.perf_counter() - started:.1f} s)")
            for workers in args.workers:
                bound = decode_seconds(paths, workers)
                store = root / f"store-{count}x{size}-k{workers}.zarr"
                shutil.rmtree(store, ignore_errors=True)
                result = ingest(source, store, workers=workers, progress=False)
                print(f"  K={workers}  ingest {rate(count, raw, result.seconds)}  ({result.seconds:6.1f} s, "
                      f"{result.shards} shards, {result.stored_bytes / 1e6:.1f} MB stored)")
                print(f"  K={workers}  decode {rate(count, raw, bound)}  ({bound:6.1f} s)  "
                      f"ingest / decode = {bound / result.seconds:.0%}")
                if workers == args.workers[0]:
                    read_back(store, raw / count)
                shutil.rmtree(store)
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
