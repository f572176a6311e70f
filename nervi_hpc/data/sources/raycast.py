"""Batched torch ray caster for scalar volumes: shaded isosurfaces (IR) and direct volume rendering.

A volume is a float tensor (D, H, W) = (z, y, x) with values in [0, 1] filling the cube [-1, 1]^3.
Cameras orbit the origin: theta is the polar angle from +z (0 looks down from the top), phi the
azimuth, both in degrees. Many views of one volume render together, their rays in bounded chunks,
on the volume's device (CPU or CUDA). Results are straight (not premultiplied) RGB and alpha as
float32 in [0, 1]; the caller composites them on its background.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

CAMERA_DISTANCE = 3.6
# Half the field of view of the shorter image side: the cube's bounding sphere (radius √3) fits.
HALF_FOV = math.asin(math.sqrt(3.0) / CAMERA_DISTANCE) + math.radians(1.0)
BLOCK = 16  # samples per ray taken together before finished rays drop out
MAX_RAYS = 1 << 17  # rays marched together; bounds memory to a few hundred MB whatever the image size
CELL_VOXELS = 4  # side of the coarse cells that empty-space skipping steps over
REFERENCE_STEP = 2.0 / 128  # the ray length that transfer-function opacities are given for


@dataclass(frozen=True)
class Surface:
    """How an isosurface looks: Phong shading under a headlight, both sides lit alike."""

    isovalue: float
    color: tuple[float, float, float] = (0.86, 0.52, 0.30)
    ambient: float = 0.25
    diffuse: float = 0.70
    specular: float = 0.35
    shininess: float = 24.0


@dataclass(frozen=True)
class TransferFunction:
    """Colour and opacity of a scalar value, each piecewise linear between control points.

    colors:    (value, (r, g, b)) points, values ascending in [0, 1]
    opacities: (value, alpha) points, values ascending in [0, 1]; alpha is per REFERENCE_STEP
    """

    colors: tuple[tuple[float, tuple[float, float, float]], ...]
    opacities: tuple[tuple[float, float], ...]

    def table(self, entries: int = 1024) -> np.ndarray:
        """The transfer function sampled at `entries` equally spaced values: float32 (entries, 4)."""
        x = np.linspace(0.0, 1.0, entries)
        cx = [v for v, _ in self.colors]
        rgb = [np.interp(x, cx, [c[i] for _, c in self.colors]) for i in range(3)]
        alpha = np.interp(x, [v for v, _ in self.opacities], [a for _, a in self.opacities])
        return np.stack(rgb + [alpha], axis=1).astype(np.float32)

    def lowest_visible(self) -> float:
        """The smallest value whose opacity is not zero (1.0 when nothing is visible)."""
        table = self.table()
        visible = np.nonzero(table[:, 3] > 0)[0]
        return float(visible[0] - 1) / (len(table) - 1) if len(visible) else 1.0


def render_isosurface(volume: torch.Tensor, theta: Sequence[float], phi: Sequence[float],
                      size: tuple[int, int], surface: Surface, *, samples_per_voxel: float = 1.0,
                      max_rays: int = MAX_RAYS) -> tuple[torch.Tensor, torch.Tensor]:
    """Views of the isosurface `value == surface.isovalue` (inside: value >= isovalue).

    Returns RGB (V, H, W, 3) and alpha (V, H, W), float32 in [0, 1]; alpha is 1 where a ray hits.
    """
    return _render(volume, theta, phi, size, surface.isovalue, samples_per_voxel, max_rays,
                   lambda *ray: _cast_isosurface(volume, surface, *ray))


def render_volume(volume: torch.Tensor, theta: Sequence[float], phi: Sequence[float],
                  size: tuple[int, int], transfer: TransferFunction, *, samples_per_voxel: float = 1.0,
                  max_rays: int = MAX_RAYS) -> tuple[torch.Tensor, torch.Tensor]:
    """Views of the volume by front-to-back emission–absorption through `transfer`.

    Returns straight RGB (V, H, W, 3) and alpha = accumulated opacity (V, H, W), float32 in [0, 1].
    """
    table = transfer.table(4096)
    extinction = -np.log1p(-np.minimum(table[:, 3], 1 - 1e-6)) / REFERENCE_STEP  # per unit length
    table = torch.from_numpy(np.concatenate([table[:, :3], extinction[:, None]], axis=1)).to(volume.device)
    return _render(volume, theta, phi, size, transfer.lowest_visible(), samples_per_voxel, max_rays,
                   lambda *ray: _cast_volume(volume, table, *ray))


def camera_frames(theta: Sequence[float], phi: Sequence[float]) -> torch.Tensor:
    """Camera frames (V, 3, 3) float64 for views (theta[i], phi[i]): rows are the unit vector from
    the origin to the camera, the image's right and the image's up.

    Right is d(position)/d(phi) and up -d(position)/d(theta), made unit, so the frame stays well
    defined at the poles (theta = 0 and 180).
    """
    theta_rad = torch.deg2rad(torch.as_tensor(theta, dtype=torch.float64))
    phi_rad = torch.deg2rad(torch.as_tensor(phi, dtype=torch.float64))
    st, ct, sp, cp = theta_rad.sin(), theta_rad.cos(), phi_rad.sin(), phi_rad.cos()
    backward = torch.stack([st * cp, st * sp, ct], dim=1)
    right = torch.stack([-sp, cp, torch.zeros_like(sp)], dim=1)
    up = torch.stack([-ct * cp, -ct * sp, st], dim=1)
    return torch.stack([backward, right, up], dim=1)


def camera_rays(frames: torch.Tensor, size: tuple[int, int], rays: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Origins and unit directions (R, 3) of rays numbered `rays` (view-major, then row, column)."""
    h, w = size
    frames = frames.to(rays.device, torch.float32)
    view, pixel = rays // (h * w), rays % (h * w)
    scale = math.tan(HALF_FOV) / (min(h, w) / 2)
    u = ((pixel % w).float() + 0.5 - w / 2) * scale
    v = (h / 2 - (pixel // w).float() - 0.5) * scale
    backward, right, up = frames[view].unbind(1)
    direction = F.normalize(-backward + u[:, None] * right + v[:, None] * up, dim=1)
    return CAMERA_DISTANCE * backward, direction


# ----------------------------------------------------------------------------------------------
# Ray setup and marching, shared by both modes

RayCaster = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def _render(volume, theta, phi, size, threshold, samples_per_voxel, max_rays, cast: RayCaster):
    """Cast every ray of every view, chunk by chunk, over the stretch where it may meet values
    >= threshold (nothing below it can be seen)."""
    if volume.dim() != 3:
        raise ValueError(f"volume must be (D, H, W), got shape {tuple(volume.shape)}")
    if len(theta) != len(phi):
        raise ValueError(f"{len(theta)} theta values but {len(phi)} phi values")
    device = volume.device
    h, w = size
    views = len(theta)
    rgb = torch.zeros(views * h * w, 3, device=device)
    alpha = torch.zeros(views * h * w, device=device)
    region = _region_at_least(volume, threshold)
    if region is None or views == 0:
        return rgb.view(views, h, w, 3), alpha.view(views, h, w)
    occupancy, cell = _coarse_occupancy(volume, threshold)
    frames = camera_frames(theta, phi)
    step = 2.0 / (max(volume.shape) - 1) / samples_per_voxel
    for start in range(0, views * h * w, max_rays):
        rays = torch.arange(start, min(start + max_rays, views * h * w), device=device)
        ray_origin, ray_dir = camera_rays(frames, size, rays)
        t_near, t_far, entry_normal = _intersect_box(ray_origin, ray_dir, *region)
        hit = torch.nonzero(t_far > t_near).squeeze(1)
        t_near[hit], t_far[hit] = _occupied_span(occupancy, cell, ray_origin[hit], ray_dir[hit],
                                                 t_near[hit], t_far[hit])
        hit = hit[t_far[hit] >= t_near[hit]]
        if len(hit):
            rgb_hit, alpha_hit = cast(ray_origin[hit], ray_dir[hit], t_near[hit], t_far[hit],
                                      entry_normal[hit], step)
            rgb[start + hit] = rgb_hit
            alpha[start + hit] = alpha_hit
    return rgb.view(views, h, w, 3), alpha.view(views, h, w)


def _region_at_least(volume: torch.Tensor, threshold: float):
    """The box (lo, hi) in world coordinates around all voxels >= threshold, one voxel wider,
    or None when there are none."""
    lo, hi = [], []
    for axis in (2, 1, 0):  # world x, y, z are the tensor's W, H, D axes
        others = tuple(a for a in range(3) if a != axis)
        occupied = torch.nonzero(torch.amax(volume, dim=others) >= threshold).squeeze(1)
        if not len(occupied):
            return None
        n = volume.shape[axis]
        first, last = max(int(occupied[0]) - 1, 0), min(int(occupied[-1]) + 1, n - 1)
        lo.append(2.0 * first / (n - 1) - 1.0)
        hi.append(2.0 * last / (n - 1) - 1.0)
    return torch.tensor(lo, device=volume.device), torch.tensor(hi, device=volume.device)


def _coarse_occupancy(volume: torch.Tensor, threshold: float) -> tuple[torch.Tensor, float]:
    """A coarse grid of nodes CELL_VOXELS apart, 1 where a voxel >= threshold lies within a cell
    (plus one voxel) around the node, else 0; and the smallest cell side in world units.

    Sampled trilinearly, this grid is 1 in every cell holding such a voxel and > 0 in the cells
    around it; a march with steps of one cell therefore finds every such place.
    """
    grid = volume
    for axis in range(3):
        n = volume.shape[axis]
        nodes = max(1, math.ceil((n - 1) / CELL_VOXELS)) + 1
        per_cell = (n - 1) / (nodes - 1)
        reach = [(max(math.floor((k - 1) * per_cell) - 1, 0), min(math.ceil((k + 1) * per_cell) + 1, n - 1))
                 for k in range(nodes)]
        grid = torch.stack([grid.narrow(axis, lo, hi - lo + 1).amax(dim=axis) for lo, hi in reach], dim=axis)
    cell = 2.0 / (max(grid.shape) - 1)
    return (grid >= threshold).to(volume.dtype), cell


def _occupied_span(occupancy, cell, origin, direction, t_near, t_far):
    """Each ray's [t_near, t_far] narrowed to where the coarse occupancy is not 0, one cell wider
    (empty on rays that meet none: t_far < t_near)."""
    entry = _sample(occupancy, origin + t_near[:, None] * direction) > 0
    first = torch.where(entry, t_near, torch.full_like(t_near, math.inf))
    last = torch.where(entry, t_near, torch.full_like(t_near, -math.inf))

    def visit(rays, ts, values, lengths):
        seen = values > 0
        first[rays] = torch.minimum(first[rays], torch.where(seen, ts, math.inf).amin(dim=1))
        last[rays] = torch.maximum(last[rays], torch.where(seen, ts, -math.inf).amax(dim=1))
        return torch.zeros(len(rays), dtype=torch.bool, device=rays.device)

    _march(occupancy, origin, direction, t_near, t_far, cell, visit)
    return torch.maximum(t_near, first - cell), torch.minimum(t_far, last + cell)


def _intersect_box(origin, direction, lo, hi):
    """Slab test: entry and exit distances of each ray (t_far <= t_near on a miss) and the outward
    normal of the face each ray enters through."""
    safe = torch.where(direction.abs() < 1e-12, torch.full_like(direction, 1e-12), direction)
    t0 = (lo - origin) / safe
    t1 = (hi - origin) / safe
    t_enter, t_exit = torch.minimum(t0, t1), torch.maximum(t0, t1)
    t_near, axis = t_enter.max(dim=1)
    t_far = t_exit.min(dim=1).values
    t_near = t_near.clamp(min=0.0)
    normal = torch.zeros_like(direction)
    normal.scatter_(1, axis[:, None], -torch.sign(direction.gather(1, axis[:, None])))
    return t_near, t_far, normal


def _sample(volume: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Trilinear samples of the volume at world points (..., 3) in [-1, 1]^3."""
    grid = points.reshape(1, 1, 1, -1, 3)
    values = F.grid_sample(volume[None, None], grid, mode="bilinear", padding_mode="border",
                           align_corners=True)
    return values.reshape(points.shape[:-1])


def _march(volume, origin, direction, t_near, t_far, step, visit):
    """Sample each ray from t_near to t_far, BLOCK samples at a time, at distances that are whole
    multiples of `step` from the camera (so slices do not follow the box: no wood-grain banding).

    `visit(rays, ts, values, lengths)` sees the next block of the still active `rays`: sample
    distances (those past t_far clamped to it), values, and the length of ray each sample stands
    for (the step, less for the first and last, 0 past the end). It returns which rays are done.
    """
    first = torch.ceil(t_near / step)
    offsets = torch.arange(BLOCK, device=origin.device, dtype=origin.dtype)
    rays = torch.arange(len(origin), device=origin.device)
    block = 0
    while len(rays):
        t_raw = (first[rays, None] + block * BLOCK + offsets) * step
        near, far = t_near[rays, None], t_far[rays, None]
        ts = torch.minimum(t_raw, far)
        lengths = (ts - torch.maximum(t_raw - step, near)).clamp(min=0.0)
        values = _sample(volume, origin[rays, None, :] + ts[..., None] * direction[rays, None, :])
        done = visit(rays, ts, values, lengths) | (t_raw[:, -1] >= far[:, 0])
        rays = rays[~done]
        block += 1


# ----------------------------------------------------------------------------------------------
# Isosurface


def _cast_isosurface(volume, surface: Surface, origin, direction, t_near, t_far, entry_normal, step):
    """First crossing of the isovalue along each ray, refined, then Phong shaded."""
    iso = surface.isovalue
    n = len(origin)
    previous_t = t_near.clone()
    previous_v = _sample(volume, origin + t_near[:, None] * direction)
    found = previous_v >= iso  # the surface is cut open by the cube: hit on the face itself
    on_face = found.clone()
    bracket = torch.zeros(n, 4, device=origin.device)  # t_below, t_above, v_below, v_above

    def visit(rays, ts, values, lengths):
        all_t = torch.cat([previous_t[rays, None], ts], dim=1)
        all_v = torch.cat([previous_v[rays, None], values], dim=1)
        above = all_v >= iso
        crossed = above.any(dim=1) & ~found[rays]
        k = above.to(torch.int8).argmax(dim=1).clamp(min=1)[:, None]
        bracket[rays] = torch.where(
            crossed[:, None],
            torch.cat([all_t.gather(1, k - 1), all_t.gather(1, k), all_v.gather(1, k - 1), all_v.gather(1, k)], 1),
            bracket[rays])
        found[rays] |= crossed
        previous_t[rays] = ts[:, -1]
        previous_v[rays] = values[:, -1]
        return found[rays]

    active = torch.nonzero(~found).squeeze(1)
    if len(active):
        _march(volume, origin[active], direction[active], t_near[active], t_far[active], step,
               lambda rays, *block: visit(active[rays], *block))
    t_hit = torch.where(on_face, t_near, _refine(volume, origin, direction, bracket, iso))
    points = origin + t_hit[:, None] * direction
    normals = torch.where(on_face[:, None], entry_normal, _gradient_normal(volume, points))
    rgb = _phong(surface, normals, direction)
    alpha = found.float()
    return rgb * alpha[:, None], alpha


def _refine(volume, origin, direction, bracket, iso, iterations: int = 3):
    """Hit distances by regula falsi inside each bracket [t_below, t_above]."""
    t_lo, t_hi, v_lo, v_hi = bracket.unbind(1)
    for _ in range(iterations):
        t_mid = t_lo + (iso - v_lo) / (v_hi - v_lo).clamp(min=1e-12) * (t_hi - t_lo)
        v_mid = _sample(volume, origin + t_mid[:, None] * direction)
        above = v_mid >= iso
        t_hi, v_hi = torch.where(above, t_mid, t_hi), torch.where(above, v_mid, v_hi)
        t_lo, v_lo = torch.where(above, t_lo, t_mid), torch.where(above, v_lo, v_mid)
    return t_lo + (iso - v_lo) / (v_hi - v_lo).clamp(min=1e-12) * (t_hi - t_lo)


def _gradient_normal(volume, points):
    """Unit surface normals (pointing out of the region above the isovalue) by central differences
    one voxel wide."""
    h = 2.0 / (min(volume.shape) - 1)
    offsets = torch.eye(3, device=points.device) * h
    probes = torch.cat([points[:, None, :] + offsets, points[:, None, :] - offsets], dim=1)
    values = _sample(volume, probes)
    gradient = values[:, :3] - values[:, 3:]
    return -F.normalize(gradient, dim=1, eps=1e-12)


def _phong(surface: Surface, normals, direction):
    """Ambient + diffuse + specular under a headlight; two-sided (a normal's sign does not matter)."""
    facing = (normals * direction).sum(dim=1).abs()  # cos of the angle to the light (= the eye)
    color = torch.tensor(surface.color, device=normals.device)
    # With the light at the eye the half vector is the view direction: specular is facing^shininess.
    lit = color * (surface.ambient + surface.diffuse * facing[:, None])
    return (lit + surface.specular * facing[:, None] ** surface.shininess).clamp(0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# Direct volume rendering


def _cast_volume(volume, table, origin, direction, t_near, t_far, entry_normal, step):
    """Front-to-back compositing; rays stop once they are (nearly) opaque.

    `table` (entries, 4) holds colour and extinction per unit length for equally spaced values;
    a sample standing for a ray length l then has opacity 1 - exp(-extinction·l).
    """
    n = len(origin)
    color = torch.zeros(n, 3, device=origin.device)
    transmittance = torch.ones(n, device=origin.device)
    top = len(table) - 1

    def visit(rays, ts, values, lengths):
        entry = table[(values.clamp(0.0, 1.0) * top + 0.5).long()]
        depth = entry[..., 3] * lengths  # optical depth of each sample's stretch of ray
        passing = torch.exp(-torch.cumsum(depth, dim=1))
        before = torch.cat([torch.ones_like(passing[:, :1]), passing[:, :-1]], dim=1)
        weight = transmittance[rays, None] * before * -torch.expm1(-depth)
        color[rays] += torch.bmm(weight[:, None, :], entry[..., :3]).squeeze(1)
        transmittance[rays] *= passing[:, -1]
        return transmittance[rays] < 1e-3

    _march(volume, origin, direction, t_near, t_far, step, visit)
    alpha = 1.0 - transmittance
    straight = color / alpha.clamp(min=1e-6)[:, None]
    return straight.clamp(0.0, 1.0), alpha
