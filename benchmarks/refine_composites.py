"""Synthetic photo composites with a known alpha, and coarse maps made the way CLIPSeg makes them.

No photos ship with our dependencies (Pillow, OpenCV, scipy and pymatting bundle none; scipy's
need a download), so the benchmark paints its own: textured, shaded backgrounds with edges of their
own, and objects with irregular outlines and hairy rims (thin strands drawn at 4x and area-reduced,
so the alpha is fractional where a strand covers part of a pixel), composited as
I = alpha F + (1 - alpha) B.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

PATCHES = 22  # CLIPSeg's grid: 352 / 16
MODEL_SIDE = 352
SUPERSAMPLE = 4


@dataclass
class Composite:
    image: np.ndarray  # HxWx3 uint8
    alpha: np.ndarray  # HxW float32, the truth
    coarse: np.ndarray  # HxW float32, what CLIPSeg would predict

    @property
    def mask(self) -> np.ndarray:
        return self.alpha >= 0.5


def smooth_field(rng: np.random.Generator, h: int, w: int, cells: int, channels: int = 3) -> np.ndarray:
    """Returns: HxWxC float32 in about [0, 1], random values on a cells x cells grid, cubic-upsampled."""
    grid = rng.random((cells, cells, channels)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC).reshape(h, w, channels)


def texture(rng: np.random.Generator, h: int, w: int, base: np.ndarray, contrast: float) -> np.ndarray:
    """A colour field plus noise at three scales: fabric, foliage, grain. Returns HxWx3 float32."""
    out = base.copy()
    for cells, weight in ((max(4, w // 40), 0.5), (max(8, w // 8), 0.3), (w, 0.2)):
        out += contrast * weight * (smooth_field(rng, h, w, cells, 1) - 0.5)
    return out


def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A shaded, textured scene with rectangles and lines (edges that are not the object's)."""
    palette = rng.random((2, 3)).astype(np.float32)
    mix = smooth_field(rng, h, w, 3, 1)
    image = texture(rng, h, w, palette[0] * mix + palette[1] * (1 - mix), 0.35)
    for _ in range(rng.integers(3, 8)):
        x0, y0 = rng.integers(0, w), rng.integers(0, h)
        x1, y1 = x0 + rng.integers(w // 10, w // 3), y0 + rng.integers(h // 10, h // 3)
        colour = rng.random(3).astype(np.float32)
        cv2.rectangle(image, (int(x0), int(y0)), (int(x1), int(y1)), colour.tolist(), -1)
    for _ in range(rng.integers(2, 6)):
        p0, p1 = rng.integers(0, (w, h)), rng.integers(0, (w, h))
        cv2.line(image, tuple(int(v) for v in p0), tuple(int(v) for v in p1), rng.random(3).tolist(),
                 int(rng.integers(1, max(2, w // 200))), cv2.LINE_AA)
    return texture(rng, h, w, image, 0.15)


def object_alpha(rng: np.random.Generator, h: int, w: int, hairy: bool) -> np.ndarray:
    """An irregular blob (random Fourier outline) with optional strands, drawn at 4x. Returns HxW float32 alpha."""
    s = SUPERSAMPLE
    big = np.zeros((h * s, w * s), np.uint8)
    cx, cy = rng.uniform(0.35, 0.65) * w * s, rng.uniform(0.35, 0.65) * h * s
    radius = rng.uniform(0.18, 0.3) * min(h, w) * s
    theta = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    r = np.ones_like(theta)
    for k in range(2, 9):
        r += rng.uniform(0, 0.25 / k ** 0.7) * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
    points = np.stack([cx + radius * r * np.cos(theta), cy + radius * r * np.sin(theta)], axis=1)
    cv2.fillPoly(big, [points.astype(np.int32)], 255, cv2.LINE_AA)
    if hairy:
        for i in rng.choice(len(theta), size=len(theta) // 3, replace=False):
            length = rng.uniform(0.01, 0.035) * max(h, w) * s
            angle = theta[i] + rng.normal(0, 0.4)
            start = points[i] - 2 * s * np.array([np.cos(theta[i]), np.sin(theta[i])])
            end = start + length * np.array([np.cos(angle), np.sin(angle)])
            cv2.line(big, tuple(start.astype(int)), tuple(end.astype(int)), 255, max(1, s // 2), cv2.LINE_AA)
    return cv2.resize(big.astype(np.float32) / 255, (w, h), interpolation=cv2.INTER_AREA)


def coarse_map(rng: np.random.Generator, alpha: np.ndarray, noise: float = 0.05) -> np.ndarray:
    """CLIPSeg's view of a mask: squashed to 352 x 352, 22 x 22 patch averages, upsampled with a little
    smooth noise, then upsampled to the photo's size (bilinear, as the CLI upsamples logits).

    Returns:
        HxW float32 in [0, 1].
    """
    h, w = alpha.shape
    square = cv2.resize(alpha, (MODEL_SIDE, MODEL_SIDE), interpolation=cv2.INTER_AREA)
    patches = square.reshape(PATCHES, MODEL_SIDE // PATCHES, PATCHES, MODEL_SIDE // PATCHES).mean(axis=(1, 3))
    model = cv2.resize(patches, (MODEL_SIDE, MODEL_SIDE), interpolation=cv2.INTER_LINEAR)
    model += noise * (cv2.resize(rng.standard_normal((PATCHES, PATCHES)).astype(np.float32),
                                 (MODEL_SIDE, MODEL_SIDE), interpolation=cv2.INTER_LINEAR))
    return np.clip(cv2.resize(model, (w, h), interpolation=cv2.INTER_LINEAR), 0, 1).astype(np.float32)


def make_composite(seed: int, width: int, height: int, hairy: bool | None = None) -> Composite:
    """One composite: an object with a known alpha on a background that differs from it in colour."""
    rng = np.random.default_rng(seed)
    hairy = bool(rng.integers(0, 2)) if hairy is None else hairy
    back = background(rng, height, width)
    palette = rng.random((2, 3)).astype(np.float32)
    shade = smooth_field(rng, height, width, 4, 1)
    front = texture(rng, height, width, palette[0] * shade + palette[1] * (1 - shade), 0.3)
    alpha = object_alpha(rng, height, width, hairy)
    image = alpha[..., None] * front + (1 - alpha[..., None]) * back
    image = np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
    return Composite(image, alpha, coarse_map(rng, alpha))
