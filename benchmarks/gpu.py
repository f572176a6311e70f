"""The GPU check: training and decoding throughput, memory, DDP over the node's GPUs, one R–D point.

    make bench-gpu        # .venv/bin/python benchmarks/gpu.py --json bench/gpu.json (sized for 5 min on one GPU)
    .venv/bin/python benchmarks/gpu.py --tiny --compile off --train-epochs 3 --rd-minutes 0.02 --json /tmp/gpu.json  # CPU, seconds

Figures, printed and written as JSON (`--json`):
- train: img/s of the real training loop (nervi_hpc.train) after its first epoch, for the
  default model at 256² (the balanced preset sized for CR 300 on 800 views) and the paper's model at
  1024² (~101 M parameters), compile off and on; bf16 autocast on GPUs that have it; the peak
  device memory of each run
- decode: img/s of each trained model at batch 1 and the decoder's default batch
- ddp: the 256² run as one DDP process per visible GPU (NCCL); with one GPU a world of 1,
  which starts no process group (said so in the figures)
- rd: the default on the 256² tornado IR scene at CR 300 after `--rd-minutes` of training:
  archive CR, PSNR, minutes

Every part that cannot run here is listed under `skipped` with the reason; no figure is made up.
`--tiny` swaps the sizes for ones a CPU trains in seconds (the test suite runs it so).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import tempfile
import time
from pathlib import Path

import torch

from nervi_hpc.config import DatasetSpec
from nervi_hpc.data.sources import open_source
from nervi_hpc.data.store import RenderStore
from nervi_hpc.model import checkpoint
from nervi_hpc.schema import build
from nervi_hpc.stages.compress import archive_meta, compress
from nervi_hpc.stages.decode.decoder import Decoder, build_model
from nervi_hpc.stages.ingest.run import ingest
from nervi_hpc.stages.train import train, uses_bf16
from train import TORNADO_IR, decode_rate, finish_training, start_training  # benchmarks/train.py

from tests.scenes import DiskScene  # noqa: E402  (benchmarks/train.py put the repository root on the path)

THETA, PHI = tuple(float(v) for v in range(0, 172, 9)), tuple(float(v) for v in range(0, 352, 9))  # 800 views
CASES = {  # name: size, model section, views (θ, φ)
    "default-256": (256, {}, (THETA, PHI)),
    "paper-1024": (1024, {"preset": "paper"}, (THETA[:4], PHI[:8])),
}
TINY_MODEL = {"c1": 8, "c2": 16, "min_channels": 4}  # no model of 32² images reaches CR 300: a fixed one
TINY_CASES = {
    "grid-32": (32, TINY_MODEL, (THETA[:4], PHI[:8])),
    "paper-64": (64, {"preset": "paper", **TINY_MODEL}, (THETA[:2], PHI[:4])),
}


def spec_of(model: dict, **settings):
    return build(DatasetSpec, {"name": "gpu", "source": {"kind": "synthetic"}, "model": model,
                               "train": {"loader_workers": 0, "batch_size": 8, **settings}})


def train_once(run: Path, store: Path, model: dict, device: torch.device, **settings) -> dict:
    """One training run in this process: its img/s after the first epoch and peak memory."""
    run.mkdir(parents=True)
    (run / "renders.zarr").symlink_to(store, target_is_directory=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = train(run, spec_of(model, epochs=settings.pop("epochs", 10**6), **settings), progress=False)
    records = [json.loads(line) for line in (run / "logs" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if "images_per_s" in r]
    steady = None
    if len(epochs) >= 2:  # the first epoch holds the compile and the warm-up
        steady = (epochs[-1]["step"] - epochs[0]["step"]) * 8 / (epochs[-1]["time"] - epochs[0]["time"])
    return {"parameters": result.parameters, "epochs": result.epochs, "seconds": round(result.seconds, 1),
            "images_per_s": result.images_per_s, "steady_images_per_s": steady,
            "steady_note": None if steady else "fewer than 2 epochs in the budget: no steady figure",
            "psnr": result.psnr,
            "peak_device_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None}


def checkpoint_decoder(run: Path, device: torch.device) -> Decoder:
    """A decoder of the run's latest float checkpoint (no quantization: speed is the same)."""
    state, config = checkpoint.load(checkpoint.latest(run / "checkpoints"))
    meta = archive_meta(state, config, "float", RenderStore.open(run / "renders.zarr"), 32, {})
    return Decoder(build_model(meta, state["model"]), meta, device=device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--tiny", action="store_true", help="sizes a CPU trains in seconds (the test suite)")
    parser.add_argument("--train-seconds", type=float, default=12.0, help="training time of each throughput run")
    parser.add_argument("--train-epochs", type=int, help="epochs of each throughput run instead (a run of "
                        "predictable length: the test suite's)")
    parser.add_argument("--compile", choices=["both", "off", "on"], default="both")
    parser.add_argument("--rd-minutes", type=float, default=3.0, help="training time of the R–D point")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    began = time.monotonic()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    gpus = torch.cuda.device_count()
    figures = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "gpus": gpus, "torch": torch.__version__,
               "precision": "bfloat16 autocast" if uses_bf16(device, "auto") else "float32",
               "threads": torch.get_num_threads(), "train": [], "decode": [], "skipped": []}
    skip = figures["skipped"].append
    if not cuda:
        skip({"part": "peak device memory", "reason": "no GPU here: peak_device_mb is null, peak_rss_mb is the host's"})
    compiles = {"both": [False, True], "off": [False], "on": [True]}[args.compile]
    if args.compile == "off":
        skip({"part": "train with compile", "reason": "--compile off"})
    cases = TINY_CASES if args.tiny else CASES
    workers = 1 if args.tiny else 8  # ingest processes
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, (size, model, (theta, phi)) in cases.items():
            store = root / name / "renders.zarr"
            ingest(DiskScene.grid(size=size, theta=theta, phi=phi), store, workers=workers, progress=False)
            rate_off = None
            for compiled in compiles:
                run = root / name / f"compile-{'on' if compiled else 'off'}"
                if args.train_epochs:
                    budget = dict(epochs=args.train_epochs)
                elif compiled and rate_off:  # as many images as the run without compile saw, plus its first epoch
                    budget = dict(epochs=1 + math.ceil(args.train_seconds * rate_off / len(theta) / len(phi)))
                else:
                    budget = dict(max_minutes=args.train_seconds / 60)
                row = {"case": name, "size": size, "model": model, "compile": compiled,
                       **train_once(run, store, model, device, compile=compiled, **budget)}
                rate_off = rate_off or row["steady_images_per_s"]
                figures["train"].append(row)
                print(f"train {name} compile {'on ' if compiled else 'off'}: {row['parameters']:,} parameters, "
                      f"{row['steady_images_per_s'] or float('nan'):.1f} img/s after epoch 1 "
                      f"({row['epochs']} epochs, {row['seconds']} s)"
                      + (f", peak {row['peak_device_mb']:.0f} MB" if cuda else ""), flush=True)
            decoder = checkpoint_decoder(root / name / f"compile-{'on' if compiles == [True] else 'off'}", device)
            for batch in sorted({1, decoder.batch_size}):
                rate = decode_rate(decoder, batch, 4 * batch)
                figures["decode"].append({"case": name, "size": size, "batch": batch, "images_per_s": rate,
                                          "precision": decoder.precision})
                print(f"decode {name} batch {batch}: {rate:.1f} img/s ({decoder.precision})", flush=True)

        if cuda:
            name, (size, model, _) = next(iter(cases.items()))
            run = root / name / "ddp"
            processes = start_training(run, root / name / "renders.zarr", model,
                                       {"epochs": 10**6, "batch_size": 8 * gpus, "max_minutes": args.train_seconds / 60},
                                       threads=torch.get_num_threads(), world=gpus)
            result = finish_training(processes, run)
            figures["ddp"] = {"case": name, "world_size": gpus, "backend": "nccl" if gpus > 1 else None,
                              "note": None if gpus > 1 else "one GPU: a world of 1 starts no process group (NCCL unexercised)",
                              "global_batch": 8 * gpus, "steady_images_per_s": result["steady_images_per_s"],
                              "epochs": result["epochs"], "psnr": result["psnr"]}
            print(f"ddp {name} on {gpus} GPU(s): {result['steady_images_per_s']:.1f} img/s after epoch 1", flush=True)
        else:
            skip({"part": "ddp", "reason": "no GPU here: the NCCL run needs CUDA devices"})

        size = 32 if args.tiny else 256
        source = {**TORNADO_IR, "size": size, **({"theta": {"start": 0, "stop": 171, "step": 57},
                                                  "phi": {"start": 0, "stop": 351, "step": 90}} if args.tiny else {})}
        run = root / "rd"
        ingest(open_source(build(DatasetSpec, {"name": "rd", "source": source}).source), run / "renders.zarr",
               workers=workers, progress=False)
        model = TINY_MODEL if args.tiny else {}
        result = train(run, spec_of(model, epochs=10**6, max_minutes=args.rd_minutes), progress=False)
        archived = compress(run, progress=False)
        figures["rd"] = {"scene": f"tornado-ir {size}²", "model": model or "default, target_cr 300",
                         "compression_ratio": archived.compression_ratio,
                         "psnr": archived.evaluation.figures["psnr_db"]["mean"], "minutes": result.seconds / 60,
                         "epochs": result.epochs, "parameters": result.parameters}
        print(f"rd tornado-ir {size}²: CR {archived.compression_ratio:.1f}, "
              f"PSNR {figures['rd']['psnr']:.2f} dB after {result.seconds / 60:.1f} min ({result.epochs} epochs)")
    figures["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures["seconds"] = time.monotonic() - began
    print(f"{figures['seconds']:.0f} s in all; skipped: {[s['part'] for s in figures['skipped']] or 'nothing'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
