"""Training throughput and memory: NeRVI vs NeRV img/s, their step-time ratio, peak RSS vs store size.

    .venv/bin/python benchmarks/train.py [--size 256] [--steps 30] [--threads 2]

- img/s of NeRVI and NeRV at --size² with a model sized for CR ≈ 300 on 800 images
  (c1=16, c2=64, min_channels=4: ~476 k parameters), and the paper's model at 1024² on CUDA
- the NeRVI/NeRV step-time ratio (the paper reports 1.37)
- peak RSS of a training process on stores of 1k and 8k images (64²): must be about equal,
  since the dataset streams from the store
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from nervi_hpc.model.loss import loss_for
from nervi_hpc.model.network import NeRVI, count_parameters
from nervi_hpc.model.sizing import model_config
from nervi_hpc.stages.ingest.run import ingest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: the tests' disk scene
from tests.scenes import DiskScene  # noqa: E402

CR300 = {"c1": 16, "c2": 64, "min_channels": 4}


def images_per_second(arch: str, size: int, model: dict, batch: int, steps: int, device: torch.device) -> tuple[float, int]:
    """Forward + loss + backward + Adam step on random data; warm-up steps are not timed."""
    cfg = model_config({"preset": "paper" if arch == "nervi" else "nerv", **model}, size, size)
    net = NeRVI(cfg, size, size, 3).to(device)
    cuda = device.type == "cuda"
    if cuda:
        net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    loss_fn = loss_for(cfg.arch)
    x = torch.rand(batch, 3, device=device) * 2 - 1
    rgb = torch.rand(batch, 3, size, size, device=device)
    mask = (torch.rand(batch, 1, size, size, device=device) > 0.5).float()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)

    def step():
        with autocast:
            loss = loss_fn(net(x).float(), rgb, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start), count_parameters(net)


def peak_rss_of_training(store: Path, epochs: int) -> float:
    """Peak RSS (MB) of a child process that trains on `store` (data read in-process)."""
    code = f"""
import resource, sys
from nervi_hpc.config import DatasetSpec
from nervi_hpc.schema import build
from nervi_hpc.stages.train import train
spec = build(DatasetSpec, {{"name": "rss", "source": {{"kind": "synthetic"}}, "model": {CR300!r},
             "train": {{"epochs": {epochs}, "batch_size": 16, "loader_workers": 0}}}})
train({str(store.parent)!r}, spec, progress=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-rss", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")

    rates = {}
    for arch in ("nervi", "nerv"):
        rates[arch], params = images_per_second(arch, args.size, CR300, args.batch, args.steps, device)
        print(f"{arch:5s} {args.size}² CR≈300 model ({params:,} params), batch {args.batch}: {rates[arch]:.1f} img/s")
    print(f"NeRVI/NeRV step-time ratio: {rates['nerv'] / rates['nervi']:.3f} (paper: 1.37)")
    if device.type == "cuda":
        paper = {"c1": 128, "c2": 1024}
        for arch in ("nervi", "nerv"):
            rate, params = images_per_second(arch, 1024, paper, 4, 10, device)
            print(f"{arch:5s} 1024² paper model ({params:,} params), batch 4, bf16: {rate:.1f} img/s")

    if not args.skip_rss:
        with tempfile.TemporaryDirectory() as tmp:
            for count in (1000, 8000):
                theta = tuple(float(v) for v in range(8))
                phi = tuple(float(v) for v in range(count // 8))
                store = Path(tmp, f"n{count}", "renders.zarr")
                ingest(DiskScene.grid(size=64, theta=theta, phi=phi), store, workers=2, progress=False)
                rss = peak_rss_of_training(store, epochs=max(1, 8000 // count))  # 500 steps either way
                print(f"peak RSS training on {count} images of 64²: {rss:.0f} MB")


if __name__ == "__main__":
    main()
