"""Composites of real photos with a known alpha, and coarse maps made the way CLIPSeg makes them.

The photos are the ones scikit-image bundles (`skimage.data`, offline; `pip install -r
benchmarks/requirements.txt`). Each composite is a background photo (a random crop, resized to the
target size) and an object cut out of another photo with a known alpha, I = alpha F + (1 - alpha) B.
The object's outline is a real one, the horse of `skimage.data.horse()` (scaled, rotated, mirrored),
or an irregular blob (a random Fourier outline), drawn at 4x and area-reduced so that the alpha is
fractional where the edge crosses a pixel; half the objects get a hairy rim (thin strands along the
outline, drawn the same way).

The bundled photos are 300 to 1411 px wide: at the large sizes they are upscaled, so their texture
is smoother than a real 12 MP photo's, while the pasted object's edge stays sharp.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np

PATCHES = 22  # CLIPSeg's grid: 352 / 16
MODEL_SIDE = 352
SUPERSAMPLE = 4
# Objects in colour; backgrounds of any kind (grey textures and scenes too). Never the same photo twice.
FOREGROUNDS = ("chelsea", "astronaut", "coffee", "rocket", "motorcycle")
BACKGROUNDS = (*FOREGROUNDS, "hubble_deep_field", "retina", "immunohistochemistry", "camera", "brick", "grass",
               "gravel")


@dataclass
class Composite:
    image: np.ndarray  # HxWx3 uint8
    alpha: np.ndarray  # HxW float32, the truth
    coarse: np.ndarray  # HxW float32, what CLIPSeg would predict

    @property
    def mask(self) -> np.ndarray:
        return self.alpha >= 0.5


@cache
def photo(name: str) -> np.ndarray:
    """One of scikit-image's bundled photos. Returns: HxWx3 uint8 RGB (grey ones repeated)."""
    try:
        from skimage import data
    except ImportError:
        raise SystemExit("refine benchmark: needs scikit-image for its photos: "
                         "pip install -r benchmarks/requirements.txt") from None
    image = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else np.ascontiguousarray(image[..., :3])


def fit_photo(rng: np.random.Generator, name: str, w: int, h: int) -> np.ndarray:
    """A random crop (60-100 % of the largest with the target's aspect), maybe mirrored, resized to w x h.

    Returns:
        HxWx3 float32 in [0, 1].
    """
    image = photo(name)
    ph, pw = image.shape[:2]
    scale = rng.uniform(0.6, 1.0) * min(pw / w, ph / h)
    cw, ch = max(1, round(w * scale)), max(1, round(h * scale))
    x0, y0 = int(rng.integers(0, pw - cw + 1)), int(rng.integers(0, ph - ch + 1))
    crop = image[y0:y0 + ch, x0:x0 + cw]
    if rng.integers(0, 2):
        crop = crop[:, ::-1]
    interpolation = cv2.INTER_AREA if cw >= w else cv2.INTER_CUBIC
    resized = cv2.resize(np.ascontiguousarray(crop), (w, h), interpolation=interpolation)
    return resized.astype(np.float32) / 255


@cache
def horse_outline() -> np.ndarray:
    """The outer outline of scikit-image's horse silhouette, lightly smoothed (its pixel steps).

    Returns:
        Nx2 float64 (x, y), centred on its bounding box, longest extent 1.
    """
    from scipy.ndimage import gaussian_filter1d
    from skimage import data

    silhouette = (~data.horse()).astype(np.uint8)  # the horse is False in the bundled array
    contours, _ = cv2.findContours(silhouette, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    points = max(contours, key=cv2.contourArea).reshape(-1, 2).astype(np.float64)
    points = gaussian_filter1d(points, 1.5, axis=0, mode="wrap")
    low, high = points.min(axis=0), points.max(axis=0)
    return (points - (low + high) / 2) / (high - low).max()


def blob_outline(rng: np.random.Generator) -> np.ndarray:
    """An irregular blob: a circle whose radius wobbles with 7 random harmonics.

    Returns:
        720x2 float64 (x, y), centred on its bounding box, longest extent 1.
    """
    theta = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    r = np.ones_like(theta)
    for k in range(2, 9):
        r += rng.uniform(0, 0.25 / k ** 0.7) * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
    points = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)
    low, high = points.min(axis=0), points.max(axis=0)
    return (points - (low + high) / 2) / (high - low).max()


def place(rng: np.random.Generator, outline: np.ndarray, w: int, h: int) -> np.ndarray:
    """Scale (longest extent 40-70 % of the short side), tilt (up to 20 degrees), mirror and move an outline
    into the frame (the horse stays upright: a blob needs no turning, its harmonics' phases are random).

    Returns:
        Nx2 float64 (x, y) in pixels of the w x h frame.
    """
    angle = rng.uniform(-0.35, 0.35)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = outline * np.array([-1.0 if rng.integers(0, 2) else 1.0, 1.0]) @ rotation.T
    points *= rng.uniform(0.4, 0.7) * min(w, h)
    low, high = points.min(axis=0), points.max(axis=0)
    margin = 0.05 * min(w, h)
    room_low = margin - low
    room_high = np.array([w, h]) - margin - high
    return points + rng.uniform(room_low, np.maximum(room_low, room_high))


def resample(points: np.ndarray, count: int) -> np.ndarray:
    """Returns: ``count`` x 2, points evenly spaced along the closed polygon ``points``."""
    closed = np.vstack([points, points[:1]])
    along = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(closed, axis=0), axis=1))])
    at = np.linspace(0, along[-1], count, endpoint=False)
    return np.stack([np.interp(at, along, closed[:, 0]), np.interp(at, along, closed[:, 1])], axis=1)


def object_alpha(rng: np.random.Generator, points: np.ndarray, h: int, w: int, hairy: bool) -> np.ndarray:
    """Fill a placed outline at 4x, add strands along it if ``hairy``, area-reduce. Returns HxW float32 alpha."""
    s = SUPERSAMPLE
    perimeter = np.linalg.norm(np.diff(np.vstack([points, points[:1]]), axis=0), axis=1).sum()
    points = resample(points, max(360, round(perimeter / (min(h, w) / 480)))) * s
    big = np.zeros((h * s, w * s), np.uint8)
    cv2.fillPoly(big, [np.round(points).astype(np.int32)], 255, cv2.LINE_AA)
    if hairy:
        tangent = np.roll(points, -1, axis=0) - np.roll(points, 1, axis=0)
        x, y = points[:, 0], points[:, 1]
        orientation = np.sign(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))  # the shoelace formula
        normal = orientation * np.stack([tangent[:, 1], -tangent[:, 0]], axis=1)
        normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-9)  # outward
        for i in rng.choice(len(points), size=len(points) // 3, replace=False):
            length = rng.uniform(0.01, 0.035) * max(h, w) * s
            angle = np.arctan2(normal[i, 1], normal[i, 0]) + rng.normal(0, 0.4)
            start = points[i] - 2 * s * normal[i]
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


def make_composite(seed: int, width: int, height: int, hairy: bool | None = None,
                   outline: str | None = None) -> Composite:
    """One composite: an object cut from one photo, with a known alpha, pasted on another photo.

    Arguments:
        hairy: strands along the outline; None: a coin toss.
        outline: "horse" or "blob"; None: a coin toss.
    """
    rng = np.random.default_rng(seed)
    hairy = bool(rng.integers(0, 2)) if hairy is None else hairy
    outline = ("horse", "blob")[rng.integers(0, 2)] if outline is None else outline
    back_name = BACKGROUNDS[rng.integers(0, len(BACKGROUNDS))]
    front_names = [name for name in FOREGROUNDS if name != back_name]
    back = fit_photo(rng, back_name, width, height)
    front = fit_photo(rng, front_names[rng.integers(0, len(front_names))], width, height)
    shape = horse_outline() if outline == "horse" else blob_outline(rng)
    alpha = object_alpha(rng, place(rng, shape, width, height), height, width, hairy)
    image = alpha[..., None] * front + (1 - alpha[..., None]) * back
    image = np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
    return Composite(image, alpha, coarse_map(rng, alpha))
