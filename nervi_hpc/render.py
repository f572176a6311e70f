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
    region = _region_at_least(volume, surface.isovalue)
    return _render(volume, theta, phi, size, region, samples_per_voxel, max_rays,
                   lambda *ray: _cast_isosurface(volume, surface, *ray))


def render_volume(volume: torch.Tensor, theta: Sequence[float], phi: Sequence[float],
                  size: tuple[int, int], transfer: TransferFunction, *, samples_per_voxel: float = 1.0,
                  max_rays: int = MAX_RAYS) -> tuple[torch.Tensor, torch.Tensor]:
    """Views of the volume by front-to-back emission–absorption through `transfer`.

    Returns straight RGB (V, H, W, 3) and alpha = accumulated opacity (V, H, W), float32 in [0, 1].
    """
    table = torch.from_numpy(transfer.table()).to(volume.device)
    region = _region_at_least(volume, transfer.lowest_visible())
    return _render(volume, theta, phi, size, region, samples_per_voxel, max_rays,
                   lambda *ray: _cast_volume(volume, table, *ray))


def camera_rays(theta: Sequence[float], phi: Sequence[float], size: tuple[int, int],
                device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Camera positions (V, 3) and unit ray directions (V, H, W, 3) for views (theta[i], phi[i]).

    The image's up vector is -d(position)/d(theta) and its right vector d(position)/d(phi) made
    unit, so the frame stays well defined at the poles (theta = 0 and 180).
    """
    theta_rad = torch.deg2rad(torch.as_tensor(theta, dtype=torch.float64))
    phi_rad = torch.deg2rad(torch.as_tensor(phi, dtype=torch.float64))
    st, ct, sp, cp = theta_rad.sin(), theta_rad.cos(), phi_rad.sin(), phi_rad.cos()
    backward = torch.stack([st * cp, st * sp, ct], dim=1)  # unit vector from origin to camera
    right = torch.stack([-sp, cp, torch.zeros_like(sp)], dim=1)
    up = torch.stack([-ct * cp, -ct * sp, st], dim=1)
    h, w = size
    scale = math.tan(HALF_FOV) / (min(h, w) / 2)
    u = (torch.arange(w, dtype=torch.float64) + 0.5 - w / 2) * scale
    v = (h / 2 - torch.arange(h, dtype=torch.float64) - 0.5) * scale
    directions = (-backward[:, None, None, :] + u[None, None, :, None] * right[:, None, None, :]
                  + v[None, :, None, None] * up[:, None, None, :])
    directions = directions / directions.norm(dim=-1, keepdim=True)
    return ((CAMERA_DISTANCE * backward).to(device, torch.float32),
            directions.to(device, torch.float32))


# ----------------------------------------------------------------------------------------------
# Ray setup and marching, shared by both modes

RayCaster = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def _render(volume, theta, phi, size, region, samples_per_voxel, max_rays, cast: RayCaster):
    """Cast every ray of every view through `region` (the box worth marching), chunk by chunk."""
    if volume.dim() != 3:
        raise ValueError(f"volume must be (D, H, W), got shape {tuple(volume.shape)}")
    if len(theta) != len(phi):
        raise ValueError(f"{len(theta)} theta values but {len(phi)} phi values")
    device = volume.device
    h, w = size
    views = len(theta)
    rgb = torch.zeros(views * h * w, 3, device=device)
    alpha = torch.zeros(views * h * w, device=device)
    if region is None or views == 0:
        return rgb.view(views, h, w, 3), alpha.view(views, h, w)
    positions, directions = camera_rays(theta, phi, size, device)
    directions = directions.reshape(-1, 3)
    step = 2.0 / (max(volume.shape) - 1) / samples_per_voxel
    for start in range(0, len(directions), max_rays):
        rays = slice(start, start + max_rays)
        ray_dir = directions[rays]
        ray_origin = positions[torch.arange(start, start + len(ray_dir), device=device) // (h * w)]
        t_near, t_far, entry_normal = _intersect_box(ray_origin, ray_dir, *region)
        hit = torch.nonzero(t_far > t_near).squeeze(1)
        if len(hit):
            rgb_hit, alpha_hit = cast(ray_origin[hit], ray_dir[hit], t_near[hit], t_far[hit],
                                      entry_normal[hit], step)
            rgb[start + hit] = rgb_hit
            alpha[start + hit] = alpha_hit
    return rgb.view(views, h, w, 3), alpha.view(views, h, w)


def _region_at_least(volume: torch.Tensor, threshold: float):
    """The box (lo, hi) in world coordinates around all voxels >= threshold, one voxel wider,
    or None when there are none (empty-space skipping for the march)."""
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
    """Front-to-back compositing; rays stop once they are (nearly) opaque."""
    n = len(origin)
    color = torch.zeros(n, 3, device=origin.device)
    transmittance = torch.ones(n, device=origin.device)
    top = len(table) - 1

    def visit(rays, ts, values, lengths):
        position = values.clamp(0.0, 1.0) * top
        low = position.floor().long().clamp(max=top - 1)
        frac = (position - low)[..., None]
        rgba = table[low] * (1 - frac) + table[low + 1] * frac
        opacity = 1.0 - (1.0 - rgba[..., 3].clamp(max=1.0)) ** (lengths / REFERENCE_STEP)
        passing = torch.cumprod(1.0 - opacity, dim=1)
        before = torch.cat([torch.ones_like(passing[:, :1]), passing[:, :-1]], dim=1)
        weight = transmittance[rays, None] * before * opacity
        color[rays] += (weight[..., None] * rgba[..., :3]).sum(dim=1)
        transmittance[rays] *= passing[:, -1]
        return transmittance[rays] < 1e-3

    _march(volume, origin, direction, t_near, t_far, step, visit)
    alpha = 1.0 - transmittance
    straight = color / alpha.clamp(min=1e-6)[:, None]
    return straight.clamp(0.0, 1.0), alpha
