"""Viewer figures: frame latency over HTTP, uncached and cached, and frames/s while playing.

    python benchmarks/viewer.py                          # 256² and 1024², CPU, a minute or two
    python benchmarks/viewer.py --sizes 256 --device cuda
    python benchmarks/viewer.py --archive out/run/archive/demo.nervi   # a real archive instead

Each size gets an archive file of the paper's 800 views (theta 0…171, phi 0…351, 9° steps) holding
an untrained model of the CR ≈ 300 size (c1 16, c2 64, min_channels 4; decode time does not depend
on the weights, PNG time a little). The viewer runs in this process on a free port; the client is
one keep-alive HTTP connection, like the page's. Figures:
  uncached   a frame nobody asked for before (prefetch off): decode + PNG + HTTP
  cached     the same frames again: an LRU lookup + HTTP
  play       the page's player along phi: request the next frame once the last is shown, with
             prefetch on; unpaced (as fast as it goes) and paced at 10 frames/s
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import torch

from nervi_hpc.codec.archive import read_header, write_archive
from nervi_hpc.codec.header import ArchiveMeta, Parameter
from nervi_hpc.codec.quantize import quantize
from nervi_hpc.model.network import NeRVI, count_parameters
from nervi_hpc.model.sizing import model_config
from nervi_hpc.model.spec import ModelSpec
from nervi_hpc.viewer import Viewer, serve_in_thread

CR300_MODEL = {"preset": "paper", "c1": 16, "c2": 64, "min_channels": 4}
PACED_FPS = 10


def untrained_archive(path: Path, size: int, model: dict) -> Path:
    """An archive file of an untrained model for the paper's 800 views of size²."""
    torch.manual_seed(0)
    theta, phi = tuple(float(v) for v in range(0, 172, 9)), tuple(float(v) for v in range(0, 352, 9))
    meta = ArchiveMeta(model=model_config(ModelSpec.parse(model), size, size),
                       parameters=(Parameter("t", 0.0, 0.0, (0.0,)), Parameter("theta", 0.0, 171.0, theta),
                                   Parameter("phi", 0.0, 351.0, phi)),
                       height=size, width=size, background=(255, 255, 255), mode="ir", count=800, bits=9)
    network = NeRVI(meta.model, size, size, 3).eval()
    write_archive(path, quantize(network.state_dict(), 9), meta.to_json())
    print(f"{path.name}: {size}², model {model}, {count_parameters(network):,} parameters")
    return path


class Client:
    """One keep-alive connection to the viewer, as a browser tab holds."""

    def __init__(self, base: str, archive_id: str, names: tuple[str, ...]):
        host, port = base.removeprefix("http://").split(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=600)
        self.archive_id, self.names = archive_id, names
        self.made: list[tuple[float, float]] = []

    def frame(self, row, **hints) -> tuple[float, str]:
        """(milliseconds to the last byte, X-Cache) of one frame request; the server's decode and
        PNG milliseconds of the frames made for it go to `made`."""
        query = urlencode({**dict(zip(self.names, (float(v) for v in row))), **hints})
        start = time.perf_counter()
        self.connection.request("GET", f"/api/archives/{self.archive_id}/frame?{query}")
        response = self.connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status} for {query}")
        cache = response.getheader("X-Cache")
        if cache == "miss":
            self.made.append((float(response.getheader("X-Decode-Ms")), float(response.getheader("X-Encode-Ms"))))
        return 1000 * (time.perf_counter() - start), cache

    def close(self):
        self.connection.close()


def spread(ms: list[float]) -> str:
    return f"{statistics.median(ms):.1f} | {np.percentile(ms, 90):.1f}"


def measure(archive: Path, device: str, frames: int) -> list[str]:
    """Markdown table rows for one archive."""
    rows = []
    viewer = Viewer([archive], device=device, prefetch=False)
    server, base = serve_in_thread(viewer)
    served = next(iter(viewer.archives.values()))
    size = f"{served.decoder.meta.width}×{served.decoder.meta.height}"
    client = Client(base, served.id, served.decoder.names)
    try:
        grid = served.decoder.grid()
        picks = grid[np.random.default_rng(0).permutation(len(grid))[:frames + 1]]
        client.frame(picks[-1])  # warm-up: allocator, first-call costs
        uncached = [client.frame(row)[0] for row in picks[:frames]]
        cached = [client.frame(row)[0] for row in picks[:frames]]
        decode, encode = (statistics.median(ms) for ms in zip(*client.made[1:]))
        rows.append(f"| {size} | uncached (decode {decode:.1f} + PNG {encode:.1f}) | {spread(uncached)} | "
                    f"{1000 / statistics.median(uncached):.1f} | 0 % |")
        rows.append(f"| {size} | cached | {spread(cached)} | {1000 / statistics.median(cached):.0f} | 100 % |")
    finally:
        client.close()
        server.shutdown()
        server.server_close()
        viewer.close()
    for paced in (False, True):
        rows.append(play(archive, device, frames, paced, size))
    return rows


def play(archive: Path, device: str, frames: int, paced: bool, size: str) -> str:
    """The player along phi from a fresh viewer (prefetch on): frames/s, latency and cache hits."""
    viewer = Viewer([archive], device=device)
    server, base = serve_in_thread(viewer)
    served = next(iter(viewer.archives.values()))
    client = Client(base, served.id, served.decoder.names)
    names = served.decoder.names
    axis = names.index("phi") if "phi" in names else int(np.argmax([len(g) for g in served.grids]))
    grid = served.grids[axis]
    row = [g[len(g) // 2] for g in served.grids]
    try:
        client.frame(row)  # the frame on screen when play is pressed
        served.frames.wait_idle(600)
        latencies, hits = [], 0
        start = time.perf_counter()
        for k in range(1, frames + 1):
            shown = time.perf_counter()
            row[axis] = grid[(grid.index(row[axis]) + 1) % len(grid)]
            ms, cache = client.frame(row, play=names[axis])
            latencies.append(ms)
            hits += cache == "hit"
            if paced:
                time.sleep(max(0.0, 1 / PACED_FPS - (time.perf_counter() - shown)))
        rate = frames / (time.perf_counter() - start)
    finally:
        client.close()
        server.shutdown()
        server.server_close()
        viewer.close()
    label = f"play, paced at {PACED_FPS}/s" if paced else "play, unpaced"
    return f"| {size} | {label} | {spread(latencies)} | {rate:.1f} | {100 * hits / frames:.0f} % |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, help="frames per figure (default: 40 at ≤ 256², 12 above)")
    parser.add_argument("--archive", action="append", default=[], help="benchmark this archive (repeatable) "
                        "instead of untrained ones")
    args = parser.parse_args()
    print(f"# viewer latency over HTTP, {args.device}, {torch.get_num_threads()} torch threads")
    with tempfile.TemporaryDirectory() as tmp:
        archives = [Path(a) for a in args.archive] or [
            untrained_archive(Path(tmp) / f"untrained-{s}.nervi", s, CR300_MODEL) for s in args.sizes]
        print("\n| size | request | median ms | p90 ms | frames/s | cache hits |\n|---|---|---|---|---|---|")
        for archive in archives:
            height = read_header(archive)["meta"]["image"]["height"]
            frames = args.frames or (40 if height <= 256 else 12)
            for row in measure(archive, args.device, frames):
                print(row, flush=True)


if __name__ == "__main__":
    main()
