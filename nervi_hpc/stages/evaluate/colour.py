"""Colour difference: CIELUV ΔE*uv between sRGB images, and the colour map that shows it."""

from __future__ import annotations

import numpy as np


# The contact sheet's ΔE*uv colour scale, fixed so sheets compare across runs: about 1–2 is just
# noticeable; silhouette errors (background vs object, ≫ 20) saturate.
DELTA_E_SCALE = 20.0


SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]])
D65_WHITE = SRGB_TO_XYZ.sum(axis=1)  # XYZ of sRGB white: (0.9505, 1, 1.0889)


def srgb_to_luv(rgb: np.ndarray) -> np.ndarray:
    """CIE L*u*v* (float64, …×3) of sRGB uint8 colours (…×3), D65 white."""
    c = rgb.astype(np.float64) / 255
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ SRGB_TO_XYZ.T
    y = xyz[..., 1] / D65_WHITE[1]
    lightness = np.where(y > (6 / 29) ** 3, 116 * np.cbrt(y) - 16, (29 / 3) ** 3 * y)

    def chromaticity(v):  # (u', v') of XYZ values; black takes the white point's (its u*, v* are 0)
        denominator = v[..., 0] + 15 * v[..., 1] + 3 * v[..., 2]
        safe = np.where(denominator > 0, denominator, 1.0)
        white = np.array([4 * D65_WHITE[0], 9 * D65_WHITE[1]]) / (D65_WHITE @ [1, 15, 3])
        uv = np.stack([4 * v[..., 0], 9 * v[..., 1]], axis=-1) / safe[..., None]
        return np.where(denominator[..., None] > 0, uv, white)

    white_uv = chromaticity(D65_WHITE)
    uv = 13 * lightness[..., None] * (chromaticity(xyz) - white_uv)
    return np.concatenate([lightness[..., None], uv], axis=-1)


def delta_e_uv(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel ΔE*uv (Euclidean distance in CIE L*u*v*) between two uint8 RGB images."""
    return np.linalg.norm(srgb_to_luv(a) - srgb_to_luv(b), axis=-1)


# A 5-stop approximation of the perceptually uniform "inferno" map: black → purple → red → yellow.
COLOUR_STOPS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], np.float64)


def colour_map(values: np.ndarray) -> np.ndarray:
    """uint8 RGB (…×3) of values in [0, 1] (clipped)."""
    position = np.clip(values, 0, 1) * (len(COLOUR_STOPS) - 1)
    low = np.minimum(position.astype(np.int64), len(COLOUR_STOPS) - 2)
    t = (position - low)[..., None]
    return np.rint(COLOUR_STOPS[low] * (1 - t) + COLOUR_STOPS[low + 1] * t).astype(np.uint8)
