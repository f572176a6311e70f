"""Synthetic scenes rendered on the fly: Crawfis's tornado and a field of many small blobs.

`SyntheticScene` is a Source over the grid t × theta × phi; it builds one scalar volume per time
step (the most recent one is cached) and renders the views with nervi_hpc.data.sources.raycast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ...config import SyntheticSource
from ...errors import ConfigError, SourceError
from . import MAX_IMAGES, Source
from .raycast import Surface, TransferFunction, render_isosurface, render_volume

PIXELS_PER_BATCH = 1 << 20  # views rendered together: bounds the float output buffers (~16 MB)
SLAB_VOXELS = 1 << 21  # voxels of a volume computed at once: bounds the temporaries (~16 MB each)


# ----------------------------------------------------------------------------------------------
# Volumes: (D, H, W) = (z, y, x) float32 in [0, 1] over [-1, 1]^3


TORNADO_TIME_PER_STEP = 10.0  # the formula's `time` per integer step of t
TORNADO_PEAK = 0.32  # the velocity magnitude's maximum (≈ 0.314 at any time) maps to ~1


def tornado_volume(resolution: int, t: float, seed: int = 0) -> torch.Tensor:
    """Velocity magnitude of Roger Crawfis's analytic tornado at time step t.

    The formula works on the unit cube with the funnel along z; it is sampled on a
    resolution³ grid there, and the magnitude divided by a fixed peak so isovalues mean the same
    at every time step. The formula switches `scale` with a hard step (its author's comment: "It
    produces a discontinuity"); here the step is a logistic ramp some four voxels wide, else the
    grid cannot sample it and the funnel's inner wall renders as voxel terraces. (`seed` is
    unused: the field is deterministic.) Built a slab of z at a time to bound memory.
    """
    time = TORNADO_TIME_PER_STEP * t
    axis = torch.linspace(0.0, 1.0, resolution, dtype=torch.float64)
    y, x = axis[:, None], axis[None, :]
    volume = torch.empty(resolution, resolution, resolution, dtype=torch.float32)
    slab = max(1, SLAB_VOXELS // (resolution * resolution))
    for start in range(0, resolution, slab):
        z = axis[start:start + slab, None, None]
        x_center = 0.5 + 0.1 * torch.sin(0.04 * time + 10.0 * z)
        y_center = 0.5 + 0.1 * torch.cos(0.03 * time + 3.0 * z)
        radius = 0.1 + 0.4 * z * z + 0.1 * z * torch.sin(8.0 * z)
        damping = 0.2 + 0.1 * z
        distance = torch.sqrt((x - x_center) ** 2 + (y - y_center) ** 2)
        off_ring = (radius - distance).abs()
        far_from_ring = torch.sigmoid((off_ring - damping) * (0.5 * (resolution - 1)))
        scale = far_from_ring * (0.8 - off_ring) + (1.0 - far_from_ring)
        lift = (0.1 * (0.1 - distance * z)).clamp(min=0.0)
        distance = torch.sqrt(distance * distance + lift * lift)
        scale = (radius + damping - distance) * scale / (distance + 1e-11) / (1.0 + z)
        vx = scale * (y - y_center) + 0.1 * (x - x_center)
        vy = -scale * (x - x_center) + 0.1 * (y - y_center)
        vz = scale * lift
        magnitude = torch.sqrt(vx * vx + vy * vy + vz * vz) / TORNADO_PEAK
        volume[start:start + slab] = magnitude.clamp(0.0, 1.0)
    return volume


BLOB_COUNT = 64
BLOB_REACH = 4.0  # a blob is summed out to this many widths (exp(-8) beyond: negligible)


def blobs_volume(resolution: int, t: float, seed: int = 0) -> torch.Tensor:
    """BLOB_COUNT small Gaussian blobs at seeded random places, each drifting on its own smooth
    periodic path as t advances; the field is their sum, clipped to [0, 1]."""
    rng = np.random.default_rng(seed)
    home = rng.uniform(-0.75, 0.75, (BLOB_COUNT, 3))
    width = rng.uniform(0.035, 0.075, BLOB_COUNT)
    speed = rng.uniform(0.15, 0.4, (BLOB_COUNT, 3))  # radians per time step
    phase = rng.uniform(0.0, 2 * math.pi, (BLOB_COUNT, 3))
    centers = home + 0.1 * np.sin(speed * t + phase)
    axis = torch.linspace(-1.0, 1.0, resolution)
    field = torch.zeros(resolution, resolution, resolution)
    for center, sigma in zip(centers.tolist(), width.tolist()):
        span = [(max(0, math.floor((c - BLOB_REACH * sigma + 1) / 2 * (resolution - 1))),
                 min(resolution, math.ceil((c + BLOB_REACH * sigma + 1) / 2 * (resolution - 1)) + 1))
                for c in center]
        gx, gy, gz = (torch.exp(-((axis[lo:hi] - c) ** 2) / (2 * sigma * sigma))
                      for c, (lo, hi) in zip(center, span))
        (x0, x1), (y0, y1), (z0, z1) = span
        field[z0:z1, y0:y1, x0:x1] += gz[:, None, None] * gy[None, :, None] * gx[None, None, :]
    return field.clamp(0.0, 1.0)


@dataclass(frozen=True)
class Scene:
    """How a synthetic scene is built and looks."""

    volume: Callable[[int, float, int], torch.Tensor]  # (resolution, t, seed) -> volume
    isovalue: float
    surface_color: tuple[float, float, float]
    transfer: TransferFunction


SCENES = {
    "tornado": Scene(
        volume=tornado_volume,
        isovalue=0.7,
        surface_color=(0.86, 0.52, 0.30),
        transfer=TransferFunction(
            colors=((0.0, (0.15, 0.25, 0.65)), (0.35, (0.20, 0.60, 0.85)), (0.6, (0.95, 0.85, 0.35)),
                    (0.85, (0.90, 0.35, 0.15)), (1.0, (0.70, 0.10, 0.10))),
            opacities=((0.0, 0.0), (0.35, 0.0), (0.55, 0.015), (0.75, 0.08), (1.0, 0.35)),
        ),
    ),
    "blobs": Scene(
        volume=blobs_volume,
        isovalue=0.5,
        surface_color=(0.40, 0.68, 0.88),
        transfer=TransferFunction(
            colors=((0.0, (0.20, 0.10, 0.45)), (0.4, (0.75, 0.25, 0.45)), (0.75, (0.98, 0.65, 0.25)),
                    (1.0, (1.0, 0.95, 0.70))),
            opacities=((0.0, 0.0), (0.1, 0.0), (0.4, 0.05), (1.0, 0.5)),
        ),
    ),
}


# ----------------------------------------------------------------------------------------------
# The source


@dataclass
class SyntheticScene(Source):
    """Renders of a synthetic scene over t × theta × phi (parameters in that order, t-major).

    Picklable and cheap to send to workers: the volume cache is not part of the pickled state.
    """

    scene: str
    isovalue: float
    resolution: int
    seed: int

    def __post_init__(self):
        self._cached_volume: tuple[float, torch.Tensor] | None = None

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_cached_volume"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._cached_volume = None

    @classmethod
    def from_spec(cls, spec: SyntheticSource) -> "SyntheticScene":
        scene = SCENES[spec.scene]
        isovalue = scene.isovalue if spec.isovalue is None else spec.isovalue
        if not 0.0 < isovalue < 1.0:
            raise ConfigError(f"source.isovalue: bad value {isovalue:g} (expected a value between 0 and 1, "
                              f"exclusive: the scene's volume is normalised to [0, 1])")
        grids = (spec.t.values, spec.theta.values, spec.phi.values)
        count = math.prod(len(g) for g in grids)
        if count > MAX_IMAGES:
            raise ConfigError(f"source: t × theta × phi is {count:,} images (at most {MAX_IMAGES:,})")
        mesh = np.meshgrid(*grids, indexing="ij")
        params = np.stack([m.ravel() for m in mesh], axis=1).astype(np.float64)
        height, width = spec.size
        counts = " × ".join(f"{len(g)} {name}" for name, g in zip(("t", "theta", "phi"), grids))
        look = f"isovalue {isovalue:g}" if spec.mode == "ir" else "transfer function"
        description = (f"synthetic {spec.scene} {spec.mode.upper()} {width}×{height}: {counts} = "
                       f"{len(params)} images ({look}, volume {spec.volume}³, seed {spec.seed})")
        return cls(names=("t", "theta", "phi"), params=params, size=(height, width), mode=spec.mode,
                   background=(255, 255, 255), mask_tolerance=0, description=description,
                   scene=spec.scene, isovalue=isovalue, resolution=spec.volume, seed=spec.seed)

    def read(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        bad = indices[(indices < 0) | (indices >= len(self))]
        if len(bad):
            raise SourceError(f"{self.description}: image index {bad[0]} out of range 0..{len(self) - 1}")
        height, width = self.size
        rgb = np.empty((len(indices), height, width, 3), np.uint8)
        alpha = np.empty((len(indices), height, width), np.uint8)
        times = self.params[indices, 0]
        cached = self._cached_volume[0] if self._cached_volume else None
        # The cached time step first, so a run of reads over one t builds its volume once.
        for t in sorted(set(times.tolist()), key=lambda v: v != cached):
            volume = self.volume(t)
            where = np.nonzero(times == t)[0]
            per_batch = max(1, PIXELS_PER_BATCH // (height * width))
            for start in range(0, len(where), per_batch):
                batch = where[start:start + per_batch]
                views = self.params[indices[batch]]
                rgb[batch], alpha[batch] = self._render(volume, views[:, 1], views[:, 2])
        return rgb, alpha

    def volume(self, t: float) -> torch.Tensor:
        """The scalar volume at time step t (the most recent one is kept)."""
        if self._cached_volume is None or self._cached_volume[0] != t:
            self._cached_volume = (t, SCENES[self.scene].volume(self.resolution, t, self.seed))
        return self._cached_volume[1]

    def _render(self, volume, theta, phi) -> tuple[np.ndarray, np.ndarray]:
        scene = SCENES[self.scene]
        if self.mode == "ir":
            surface = Surface(self.isovalue, color=scene.surface_color)
            rgb, alpha = render_isosurface(volume, theta.tolist(), phi.tolist(), self.size, surface)
        else:
            rgb, alpha = render_volume(volume, theta.tolist(), phi.tolist(), self.size, scene.transfer)
        return _to_uint8(rgb), _to_uint8(alpha)


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x * 255.0).round().to(torch.uint8).cpu().numpy()
