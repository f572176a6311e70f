"""Training throughput: the loop before issue 13 against today's, NeRVI vs NeRV img/s, peak RSS.

    .venv/bin/python benchmarks/train.py [--parts loops ratio rss] [--epochs 4] [--threads 1]

- loops: the training loop as it was (`OLD_LOOP`: batches streamed from the store, the clock and
  loss read after every step, per-tensor Adam) against today's defaults and with torch.compile,
  trained side by side (one process each, `--threads` threads) for the same epochs on the
  256² tornado IR scene (800 views) with the default model (the balanced preset sized for
  CR 300; `--model` for another):
  img/s over the time all of them ran at once past their first epoch (compiling happens in it;
  a compiled loop starts first), PSNR, minutes; then decode img/s of the trained archive at
  batch 1 and 64
- ratio: img/s of NeRVI and NeRV on random data at --size² with a model sized for CR ≈ 300 on
  800 images (c1=16, c2=64, min_channels=4: ~476 k parameters), and their step-time ratio (the
  paper reports 1.37); the paper's model at 1024² on CUDA
- rss: peak RSS of a training process on stores of 1k and 8k images (64²): must be about equal,
  since the dataset streams from the store
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nervi_hpc.config import DatasetSpec
from nervi_hpc.data.sources import open_source
from nervi_hpc.model import checkpoint
from nervi_hpc.model.loss import loss_for
from nervi_hpc.model.network import NeRVI, count_parameters
from nervi_hpc.model.sizing import model_config
from nervi_hpc.model.spec import ModelSpec
from nervi_hpc.schema import build
from nervi_hpc.stages.compress import compress
from nervi_hpc.stages.decode.decoder import Decoder
from nervi_hpc.stages.ingest.run import ingest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: the tests' disk scene
from tests.scenes import DiskScene  # noqa: E402

CR300 = {"c1": 16, "c2": 64, "min_channels": 4}


def images_per_second(arch: str, size: int, model: dict, batch: int, steps: int, device: torch.device) -> tuple[float, int]:
    """Forward + loss + backward + Adam step on random data; warm-up steps are not timed."""
    cfg = model_config(ModelSpec.parse({"preset": "paper" if arch == "nervi" else "nerv", **model}), size, size)
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


OLD_LOOP = {"resident_share": 0.0, "sync_every": 1, "fused_adam": False}  # the loop before issue 13
LOOPS = {"old": OLD_LOOP, "new": {}, "new+compile": {"compile": True}}
TORNADO_IR = {"kind": "synthetic", "scene": "tornado", "mode": "ir", "size": 256, "t": 0,
              "theta": {"start": 0, "stop": 171, "step": 9}, "phi": {"start": 0, "stop": 351, "step": 9}}

TRAIN_PROCESS = """
import dataclasses, json, sys, torch
from nervi_hpc.config import DatasetSpec
from nervi_hpc.schema import build
from nervi_hpc.stages.train import train
run, model, settings, threads = json.loads(sys.argv[1])
torch.set_num_threads(threads)
spec = build(DatasetSpec, {"name": "bench", "source": {"kind": "synthetic"}, "model": model, "train": settings})
print(json.dumps(dataclasses.asdict(train(run, spec, progress=False))))
"""


def start_training(run: Path, store: Path, model: dict, settings: dict, threads: int,
                   world: int = 1) -> list[subprocess.Popen]:
    """`world` processes training the run `run` on `store` (one DDP rank each when world > 1,
    on this node's GPUs by local rank), with `threads` CPU threads each."""
    run.mkdir(parents=True, exist_ok=True)
    if not (run / "renders.zarr").exists():
        (run / "renders.zarr").symlink_to(store.resolve(), target_is_directory=True)
    args = json.dumps([str(run), model, {"loader_workers": 0, **settings}, threads])
    port = str(29500 + os.getpid() % 1000)
    processes = []
    for rank in range(world):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        if world > 1:
            env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=port)
        processes.append(subprocess.Popen([sys.executable, "-c", TRAIN_PROCESS, args], env=env,
                                          stdout=subprocess.PIPE, text=True))
    return processes


def finish_training(processes: list[subprocess.Popen], run: Path) -> dict:
    """Rank 0's TrainResult, with `steady_images_per_s`: img/s from the end of the first epoch
    to the end (compiling and the first epoch's warm-up left out), and `minutes` of training."""
    outputs = [p.communicate()[0] for p in processes]
    if any(p.returncode for p in processes):
        raise RuntimeError(f"training {run} failed (exit {[p.returncode for p in processes]})")
    result = json.loads(outputs[0].strip().splitlines()[-1])
    records = [json.loads(line) for line in (run / "logs" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if "images_per_s" in r]
    _, config = checkpoint.load(checkpoint.latest(run / "checkpoints"))
    result["batch_size"] = config.batch_size
    result["progress"] = [(r["time"], r["step"]) for r in epochs]  # (time, steps done) at each epoch's end
    if len(epochs) >= 2:
        images = (epochs[-1]["step"] - epochs[0]["step"]) * config.batch_size
        result["steady_images_per_s"] = images / (epochs[-1]["time"] - epochs[0]["time"])
    else:
        result["steady_images_per_s"] = result["images_per_s"]
    result["minutes"] = result["seconds"] / 60
    return result


def first_epoch_done(processes: list[subprocess.Popen], run: Path) -> None:
    """Wait until the run has logged its first epoch (or ended)."""
    metrics = run / "logs" / "metrics.jsonl"
    while processes[0].poll() is None and not (metrics.exists() and "images_per_s" in metrics.read_text()):
        time.sleep(1)


def window_rates(results: dict[str, dict]) -> tuple[dict[str, float], float]:
    """Each run's img/s over the window in which every run was past its first epoch and none had
    finished (steps interpolated between epoch ends), and the window's seconds: the runs shared
    the machine alike over it."""
    start = max(r["progress"][0][0] for r in results.values())
    end = min(r["progress"][-1][0] for r in results.values())
    rates = {}
    for name, r in results.items():
        times, steps = zip(*r["progress"])
        done = np.interp([start, end], times, steps)
        rates[name] = (done[1] - done[0]) * r["batch_size"] / (end - start) if end > start else float("nan")
    return rates, end - start


def decode_rate(decoder: Decoder, batch: int, images: int) -> float:
    """img/s decoding `images` rows of the training grid `batch` at a time (host arrays out)."""
    grid = decoder.grid()
    rows = grid[np.arange(max(images, batch)) % len(grid)]
    decoder.batch_size = batch
    decoder.decode(rows[:batch])  # warm-up: allocator, kernels
    if decoder.cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    decoder.decode(rows)
    return len(rows) / (time.perf_counter() - start)


def compare_loops(store: Path, root: Path, loops: list[str], epochs: int, threads: int, model: dict) -> None:
    """The loops of LOOPS trained side by side on `store`, then decode speed of the last one's archive."""
    settings = {"epochs": epochs, "batch_size": 8}
    started = {}
    # a compiling loop starts first and the others once it has compiled: then all of them train
    # side by side (the compile's CPU time would slow only its rivals' measured epochs otherwise)
    for name in sorted(loops, key=lambda n: not LOOPS[n].get("compile")):
        if started and not LOOPS[name].get("compile"):
            for other in [n for n in started if LOOPS[n].get("compile")]:
                first_epoch_done(started[other], root / other)
        started[name] = start_training(root / name, store, model, {**settings, **LOOPS[name]}, threads)
    results = {name: finish_training(started[name], root / name) for name in loops}
    rates, window = window_rates(results)
    print(f"\n## training loops side by side: {epochs} epochs, batch 8, {threads} thread(s) each, "
          f"model {model or 'default'} ({results[loops[0]]['parameters']:,} parameters)")
    print(f"img/s side by side: over the {window:.0f} s in which all were past epoch 1 and none had finished")
    print(f"| loop | img/s side by side | × {loops[0]} | img/s after epoch 1 | img/s overall | minutes | PSNR dB | loss |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {rates[name]:.1f} | {rates[name] / rates[loops[0]]:.2f} | {r['steady_images_per_s']:.1f} | "
              f"{r['images_per_s']:.1f} | {r['minutes']:.1f} | {r['psnr']:.2f} | {r['loss']:.4f} |")
    archive = compress(root / loops[-1], evaluate=False, progress=False).archive
    decoder = Decoder.open(archive, device="cpu")
    print(f"\n## decode of {archive.name} on the CPU ({decoder.precision}, {torch.get_num_threads()} threads)")
    print("| batch | img/s |\n|---|---|")
    for batch in (1, 64):
        print(f"| {batch} | {decode_rate(decoder, batch, 128):.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["loops", "ratio", "rss"], choices=["loops", "ratio", "rss"])
    parser.add_argument("--loops", nargs="+", default=list(LOOPS), choices=list(LOOPS))
    parser.add_argument("--epochs", type=int, default=4, help="epochs of each loop (loops)")
    parser.add_argument("--store", type=Path, help="a renders store to train the loops on (default: render "
                        "the 256² tornado IR scene, 800 views, ~2 CPU minutes)")
    parser.add_argument("--model", type=json.loads, default={}, help="model section as JSON (loops; default: the default)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")

    if "loops" in args.parts:
        with tempfile.TemporaryDirectory() as tmp:
            store = args.store or Path(tmp, "tornado-ir", "renders.zarr")
            if not store.exists():
                spec = build(DatasetSpec, {"name": "tornado-ir", "source": TORNADO_IR})
                ingest(open_source(spec.source), store, workers=2, progress=False)
            compare_loops(store, Path(tmp), args.loops, args.epochs, args.threads, args.model)

    if "ratio" in args.parts:
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

    if "rss" in args.parts:
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
