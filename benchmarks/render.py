"""Render speed of the synthetic scenes: images per second for tornado and blobs, IR and DVR.

    python benchmarks/render.py                     # 256² on CPU (and 1024² too on CUDA if present)
    python benchmarks/render.py --sizes 128 256 --views 64 --threads 2

Views are spread over the sphere (poles included); the volume is built once per scene, outside
the timing. "cpu s/img" is process CPU time (all threads), steadier than wall time on a shared
machine. "peak MB" is the CUDA allocator's peak, or on CPU (Linux) how far the process's peak
resident size rose above its resident size before the renders.
"""

from __future__ import annotations

import argparse
from pathlib import Path
import time

import numpy as np
import torch

from nervi_hpc.data.sources.raycast import Surface, render_isosurface, render_volume
from nervi_hpc.data.sources.synthetic import SCENES


def views(count: int) -> tuple[list[float], list[float]]:
    """`count` viewpoints on a theta × phi lattice that includes both poles."""
    rows = max(2, int(round(np.sqrt(count / 2))))
    theta = np.repeat(np.linspace(0.0, 180.0, rows), -(-count // rows))[:count]
    phi = np.tile(np.linspace(0.0, 360.0, -(-count // rows), endpoint=False), rows)[:count]
    return theta.tolist(), phi.tolist()


def resident_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process, from /proc (Linux)."""
    return int(Path("/proc/self/status").read_text().split(f"{field}:")[1].split()[0]) / 1024


def reset_peak(device: torch.device) -> float:
    """Start measuring peak memory; returns the baseline to subtract."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return 0.0
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    return resident_mb("VmRSS")


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resident_mb("VmHWM")


def measure(name: str, mode: str, size: int, count: int, resolution: int, device: torch.device):
    scene = SCENES[name]
    volume = scene.volume(resolution, 0.0, 0).to(device)
    theta, phi = views(count)

    def render(th, ph):
        if mode == "ir":
            return render_isosurface(volume, th, ph, (size, size), Surface(scene.isovalue, scene.surface_color))
        return render_volume(volume, th, ph, (size, size), scene.transfer)

    render(theta[:1], phi[:1])  # warm-up
    baseline = reset_peak(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    _, alpha = render(theta, phi)
    peak = peak_mb(device) - baseline  # synchronises CUDA
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return count / seconds, cpu_seconds / count, peak, float((alpha > 0).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", help="image sides (default 256, plus 1024 on CUDA)")
    parser.add_argument("--views", type=int, default=32, help="views per measurement (default 32)")
    parser.add_argument("--volume", type=int, default=128, help="voxels per side (default 128)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sizes = args.sizes or ([256, 1024] if device.type == "cuda" else [256])
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"render speed on {where}, volume {args.volume}³, {args.views} views each")
    print(f"{'scene':8} {'mode':4} {'size':>6} {'img/s':>7} {'800 imgs':>9} {'cpu s/img':>10} "
          f"{'peak MB':>8} {'fg':>5}")
    for size in sizes:
        for name in SCENES:
            for mode in ("ir", "dvr"):
                rate, cpu, peak, fg = measure(name, mode, size, args.views, args.volume, device)
                print(f"{name:8} {mode:4} {f'{size}²':>6} {rate:7.1f} {800 / rate:8.1f}s {cpu:10.3f} "
                      f"{peak:8.0f} {fg:5.2f}", flush=True)


if __name__ == "__main__":
    main()
