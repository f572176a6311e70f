"""Training cost of one ×2 upsampling block at 128² on this machine: depthwise, pointwise MLP,
bilinear + dense 3×3 and PixelShuffle, at 12/16/24 channels (ms per image, forward + backward +
Adam, batch 8, one thread). Why the `bilinear` blocks are dense convolutions (docs/benchmarks.md).

    python benchmarks/blocks.py
"""

import time

import torch
from torch import nn


def ms_per_image(block: nn.Module, x: torch.Tensor, steps: int = 4) -> float:
    optimizer = torch.optim.Adam(block.parameters())
    for i in range(steps + 1):
        if i == 1:  # the first step warms the allocator up
            start = time.perf_counter()
        block(x).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return (time.perf_counter() - start) / steps / len(x) * 1000


def main() -> None:
    torch.set_num_threads(1)
    up = lambda: nn.Upsample(scale_factor=2, mode="bilinear")  # noqa: E731
    for c in (12, 16, 24):
        blocks = {
            "depthwise 3×3": nn.Sequential(up(), nn.Conv2d(c, c, 3, padding=1, groups=c)),
            "pointwise MLP ×2": nn.Sequential(up(), nn.Conv2d(c, 2 * c, 1), nn.GELU(), nn.Conv2d(2 * c, c, 1)),
            "bilinear + 3×3": nn.Sequential(up(), nn.Conv2d(c, c, 3, padding=1), nn.GELU()),
            "PixelShuffle": nn.Sequential(nn.Conv2d(c, 4 * c, 3, padding=1), nn.PixelShuffle(2), nn.GELU()),
        }
        x = torch.rand(8, c, 64, 64)
        print(f"{c:3d} channels: " + ", ".join(f"{name} {ms_per_image(b, x):.1f} ms" for name, b in blocks.items()))


if __name__ == "__main__":
    main()
