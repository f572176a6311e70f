"""Training-step cost of whole models, side by side in one process: each `model:` section sized
for the collection (800 views of --size², CR 300 unless it says otherwise), one training step of
the default recipe (forward, loss, backward, Adam) on a batch of random images, the models taking
turns so that the machine's load falls on all of them alike. Prints each model's GFLOP per step
(torch's FLOP counter: convolutions and matrix products, forward and backward; deterministic),
ms per step (the median of --steps) and each one's ratio to the first.

    python benchmarks/steps.py --size 128 "{}" "{channel_decay: 1.5}" "{min_channels: 8}"
    python benchmarks/steps.py --size 256 "{}" "{}" --amp off bf16     # bf16 autocast on the CPU

Why a separate measurement: the CPU seconds of runs made at different times swing by ±40 % with
the load of this shared machine (docs/benchmarks.md, "Model screens at 100 epochs").
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from nervi_hpc.config import TrainSpec
from nervi_hpc.model.loss import loss_for
from nervi_hpc.model.network import NeRVI, count_parameters
from nervi_hpc.model.sizing import model_config
from nervi_hpc.model.spec import ModelSpec
from nervi_hpc.schema import build

VIEWS = {"t": [0.0], "theta": [float(v) for v in range(0, 172, 9)], "phi": [float(v) for v in range(0, 352, 9)]}


class Setup:
    """One model of the comparison with its optimizer, and whether it steps under bf16 autocast."""

    def __init__(self, section: dict, size: int, bf16: bool):
        spec = ModelSpec.parse({"target_cr": 300, **section} if "c2" not in section else section)
        config = model_config(spec, size, size, count=len(VIEWS["theta"]) * len(VIEWS["phi"]), grids=VIEWS)
        self.name = f"{yaml.safe_dump(section, default_flow_style=True).strip()}{' bf16' if bf16 else ''}"
        self.model = NeRVI(config, size, size, len(VIEWS))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        recipe = build(TrainSpec, {})
        self.loss = loss_for(config.arch, recipe.mask_loss, ssim_weight=recipe.ssim_weight,
                             composite_weight=recipe.composite_weight)
        self.bf16 = bf16
        self.times: list[float] = []

    def gflop(self, x: torch.Tensor, rgb: torch.Tensor, mask: torch.Tensor) -> float:
        """GFLOP of one step's convolutions and matrix products (forward and backward)."""
        with FlopCounterMode(display=False) as counter:
            self.step(x, rgb, mask)
        return counter.get_total_flops() / 1e9

    def step(self, x: torch.Tensor, rgb: torch.Tensor, mask: torch.Tensor) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            output = self.model(x)
        loss = self.loss(output, rgb, mask)  # float32 outside autocast, as training does
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> list[tuple[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="model: sections as YAML flow mappings, e.g. \"{min_channels: 8}\"")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--amp", nargs="+", choices=["off", "bf16"], default=["off"],
                        help="one per model (or one for all): bf16 autocast on the CPU")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    amps = args.amp * len(args.models) if len(args.amp) == 1 else args.amp
    if len(amps) != len(args.models):
        parser.error("--amp takes one value, or one per model")
    setups = [Setup(yaml.safe_load(text) or {}, args.size, amp == "bf16") for text, amp in zip(args.models, amps)]
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, len(VIEWS), generator=generator) * 2 - 1
    rgb = torch.rand(args.batch, 3, args.size, args.size, generator=generator)
    mask = (torch.rand(args.batch, 1, args.size, args.size, generator=generator) > 0.5).float()
    flops = [setup.gflop(x, rgb, mask) for setup in setups]  # also the warm-up: allocator, oneDNN kernels
    for _ in range(args.steps):
        for setup in setups:
            setup.times.append(setup.step(x, rgb, mask))
    medians = [(setup.name, statistics.median(setup.times)) for setup in setups]
    first = medians[0][1]
    for setup, gflop, (name, seconds) in zip(setups, flops, medians):
        print(f"{name:40s} {count_parameters(setup.model):>10,} weights  {gflop:7.2f} GFLOP (× {gflop / flops[0]:.2f})  "
              f"{seconds * 1000:8.1f} ms a step  × {seconds / first:.2f}")
    return medians


if __name__ == "__main__":
    main()
