"""A test fixture: coloured disks on white, a cheap analytic scene (no ray casting) for tests
and benchmarks."""

from dataclasses import dataclass

import numpy as np

from nervi_hpc.data.sources import Source


@dataclass
class DiskScene(Source):
    """Coloured disks on white whose positions move smoothly with (t, theta, phi).

    `disks` small disks make the paper's hard case (many separate components); alpha marks them.
    """

    disks: int = 1
    radius: float = 0.22

    @classmethod
    def grid(cls, size=32, t=(0.0,), theta=(30.0, 60.0, 90.0, 120.0), phi=(0.0, 90.0, 180.0, 270.0),
             disks=1, radius=0.22):
        params = np.array([(a, b, c) for a in t for b in theta for c in phi], np.float64)
        return cls(("t", "theta", "phi"), params, (size, size), "ir", (255, 255, 255), 0,
                   f"{disks} disks", disks, radius)

    def read(self, indices):
        h, w = self.size
        y, x = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
        rgb = np.empty((len(indices), h, w, 3), np.uint8)
        alpha = np.empty((len(indices), h, w), np.uint8)
        for k, i in enumerate(indices):
            t, theta, phi = self.params[i]
            inside = np.zeros((h, w), bool)
            shade = np.zeros((h, w))
            for d in range(self.disks):
                ang = np.radians(phi) + 2 * np.pi * d / self.disks
                r = 0.3 * np.sin(np.radians(theta)) if self.disks == 1 else 0.33
                cy, cx = 0.5 + r * np.sin(ang) + 0.05 * t, 0.5 + r * np.cos(ang)
                dist = np.hypot(y - cy, x - cx) / self.radius
                inside |= dist < 1
                shade = np.maximum(shade, np.clip(1 - dist, 0, 1))
            colour = np.stack([60 + 150 * shade, 90 + 60 * shade, 200 - 80 * shade + 10 * t], -1)
            rgb[k] = np.where(inside[..., None], colour, 255).astype(np.uint8)
            alpha[k] = inside * 255
        return rgb, alpha
