"""Edge-aware refinement of a probability map: the fast guided filter (He & Sun 2015, arXiv:1505.00996).

The guided filter (He, Sun & Tang, ECCV 2010) models the output as locally linear in the guide
image, q = a . I + b in every window, fitted to the input map p by least squares. Where the image
has an edge inside a window, q gets that edge: a blob that CLIPSeg predicts from 22 x 22 patches
snaps to the object's outline. The fast variant fits a and b on a reduced copy and applies them to
the full-resolution image, so the edges are the full image's and the cost is a few passes over it.

The radius is a fixed fraction of the image's longest side (the work happens at a fixed reduced
size), so a 640 x 480 and a 4000 x 3000 photo are refined alike.
"""

from __future__ import annotations

import numpy as np

# The reduced copy on which a and b are fitted: its longest side, in pixels.
WORK_SIDE = 320
# Window radius at that size: the window (21 px) spans about 1.5 CLIPSeg patches (WORK_SIDE / 22 = 14.5 px),
# enough to reach the object's edge from a blob's 0.5 contour.
RADIUS = 10
# Regularisation of a, on intensities in [0, 1]: lower follows weaker edges.
EPS = 1e-4
# Filtering passes; each one pulls the map further onto the image's edges.
PASSES = 3


def guided_refine(image: np.ndarray, prob: np.ndarray, *, radius: int = RADIUS, eps: float = EPS,
                  passes: int = PASSES, work_side: int = WORK_SIDE) -> np.ndarray:
    """Refine a probability map with the image as guide (fast colour guided filter).

    Arguments:
        image: HxWx3 uint8 RGB, the guide at full resolution.
        prob: HxW float32 probabilities in [0, 1].
        radius: window radius in pixels of the reduced copy (longest side ``work_side``).
        eps: regularisation; windows whose colour variance is below it are smoothed, not sharpened.
        passes: how many times the filter is applied (the output of one is the input of the next).

    Returns:
        HxW float32 map in [0, 1].
    """
    import cv2

    h, w = prob.shape
    scale = min(1.0, work_side / max(h, w))
    small = (max(1, round(w * scale)), max(1, round(h * scale)))  # cv2 sizes are (width, height)
    guide = cv2.resize(image, small, interpolation=cv2.INTER_AREA)
    coarse = cv2.resize(prob.astype(np.float32, copy=False), small, interpolation=cv2.INTER_AREA)
    return guided_upsample(image, guide, coarse, radius=radius, eps=eps, passes=passes)


def guided_upsample(image: np.ndarray, guide: np.ndarray, coarse: np.ndarray, *, radius: int, eps: float,
                    passes: int = 1) -> np.ndarray:
    """Bring a map computed on a reduced copy of the image to full size, along the image's edges.

    Arguments:
        image: HxWx3 uint8, the full-size guide.
        guide: hxwx3 uint8, its reduced copy.
        coarse: hxw float32 map on the reduced copy.

    Returns:
        HxW float32 map in [0, 1].
    """
    import cv2

    h, w = image.shape[:2]
    guide = guide.astype(np.float32) * np.float32(1 / 255)
    stats = _guide_stats(guide, radius, eps)
    for _ in range(passes - 1):  # the middle passes stay at the reduced size
        coarse = np.clip(_apply(*_coefficients(guide, coarse, stats, radius), guide), 0.0, 1.0)
    a, b = _coefficients(guide, coarse, stats, radius)
    full = image.astype(np.float32)
    full *= np.float32(1 / 255)
    return np.clip(_apply(cv2.resize(a, (w, h), interpolation=cv2.INTER_LINEAR),
                          cv2.resize(b, (w, h), interpolation=cv2.INTER_LINEAR), full), 0.0, 1.0)


def _box(x: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2 radius + 1)^2 window, mirrored at the border. x: HxW or HxWxC float32."""
    import cv2

    return cv2.boxFilter(x, -1, (2 * radius + 1, 2 * radius + 1), borderType=cv2.BORDER_REFLECT)


def _guide_stats(guide: np.ndarray, radius: int, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Window means of the guide and the inverse of its regularised colour covariance.

    Arguments:
        guide: hxwx3 float32.

    Returns:
        (hxwx3 means, hxwx3x3 inverse covariances).
    """
    mean = _box(guide, radius)
    pairs = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))
    products = np.stack([guide[..., i] * guide[..., j] for i, j in pairs], axis=-1)
    cov = _box(products, radius) - np.stack([mean[..., i] * mean[..., j] for i, j in pairs], axis=-1)
    return mean, _inverse_symmetric(cov, eps)


def _inverse_symmetric(cov: np.ndarray, eps: float) -> np.ndarray:
    """Inverse of (C + eps I) for symmetric 3x3 matrices C given by their 6 upper entries.

    By cofactors (a batched np.linalg.inv is several times slower on millions of 3x3 matrices).

    Arguments:
        cov: hxwx6 float32, (xx, xy, xz, yy, yz, zz).

    Returns:
        hxwx3x3 float32.
    """
    xx, xy, xz, yy, yz, zz = (cov[..., k] for k in range(6))
    xx, yy, zz = xx + np.float32(eps), yy + np.float32(eps), zz + np.float32(eps)
    c00, c01, c02 = yy * zz - yz * yz, xz * yz - xy * zz, xy * yz - xz * yy
    c11, c12, c22 = xx * zz - xz * xz, xy * xz - xx * yz, xx * yy - xy * xy
    det = xx * c00 + xy * c01 + xz * c02
    rows = ((c00, c01, c02), (c01, c11, c12), (c02, c12, c22))
    return np.stack([np.stack(row, axis=-1) for row in rows], axis=-2) / det[..., None, None]


def _coefficients(guide: np.ndarray, prob: np.ndarray, stats: tuple[np.ndarray, np.ndarray], radius: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The window-averaged linear model q = a . I + b fitted to ``prob``.

    Returns:
        (hxwx3 float32 a, hxw float32 b).
    """
    mean, inverse = stats
    mean_p = _box(prob, radius)
    cov_ip = _box(guide * prob[..., None], radius) - mean * mean_p[..., None]
    a = np.einsum("hwij,hwj->hwi", inverse, cov_ip).astype(np.float32)
    b = mean_p - np.einsum("hwi,hwi->hw", a, mean)
    return _box(a, radius), _box(b, radius)


def _apply(a: np.ndarray, b: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Returns: HxW float32 a . I + b, computed in ``b`` (which the caller hands over).
    a: HxWx3, b: HxW, image: HxWx3 float32."""
    for channel in range(3):
        b += a[..., channel] * image[..., channel]
    return b
