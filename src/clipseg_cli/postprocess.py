"""Mask post-processing and prompt algebra: pure numpy functions on probability maps.

Conventions shared by every function here:
- A map *fires* at a pixel where its value is ``>= threshold``. Thresholding in `make_mask` and the
  negative rule in `combine` use this one comparison.
- Dilation and erosion use a square (Chebyshev) structuring element: dilating by PX grows a
  k x k square to exactly (k + 2 PX) x (k + 2 PX); eroding by PX shrinks it by PX on each side.
  Dilation comes first, so both together are a closing (holes up to 2 PX wide are filled).
  Radii past the image's size give the same result as the image's size, so they are clamped.
- Pixels outside the image are background for dilation and foreground for erosion, so the image
  border neither adds foreground nor eats a mask that touches it.
- Connected components are 8-connected (pixels touching at a corner belong together).

The image operations are OpenCV's. Our own code remains only where OpenCV cannot do it or is
slower: blur kernels as wide as the image (`_blur_folded`) and radii past `OPENCV_MAX_RADIUS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from clipseg_cli.errors import ClipSegError

# Gaussian kernels reach 4 sigma on each side (as scipy.ndimage does); weight beyond is < 1e-4.
GAUSSIAN_TRUNCATE = 4.0
# OpenCV's square dilation and erosion take time in proportion to the radius; past this radius our
# doubling spans (`_window_any`, time in proportion to its logarithm) are faster (measured on a
# 4000x3000 mask: about even at 100 px, ours 3x faster at 250 px, 10x at 500 px).
OPENCV_MAX_RADIUS = 96


@dataclass(frozen=True)
class PostProcess:
    """Settings for turning one probability map into a mask; see `make_mask` for the order of steps.

    The whole order, in the CLI and the engine: prompt algebra (`combine`: union, negatives), then
    the refinement with the image (``--refine``, `clipseg_cli.refine.refine_map`), then blur,
    threshold, dilate, erode, min_area, invert (`mask_and_map`); soft outputs and cut-outs show
    the map m of `mask_and_map`.

    threshold: a pixel is foreground where its (blurred) probability is >= threshold, in (0, 1].
    blur: sigma in pixels of the Gaussian applied to the probability map first; 0 turns it off.
    dilate: grow the mask by this many pixels.
    erode: then shrink it by this many pixels.
    min_area: drop 8-connected foreground components with fewer pixels than this; 0 keeps all.
    invert: swap foreground and background as the last step.
    """

    threshold: float = 0.4
    blur: float = 0.0
    dilate: int = 0
    erode: int = 0
    min_area: int = 0
    invert: bool = False

    def __post_init__(self) -> None:
        for name, kind in (("threshold", float), ("blur", float), ("dilate", int), ("erode", int), ("min_area", int)):
            value = getattr(self, name)  # blur=2 and blur=2.0 must give one fingerprint
            if kind is int and not float(value).is_integer():
                raise ClipSegError(f"{name} must be a whole number of pixels, got {value}")
            object.__setattr__(self, name, kind(value))
        if not 0.0 < self.threshold <= 1.0:
            raise ClipSegError(f"threshold must be in (0, 1], got {self.threshold}; pick e.g. 0.4")
        if not math.isfinite(self.blur) or self.blur < 0:
            raise ClipSegError(f"blur must be a finite number of pixels >= 0, got {self.blur}; use 0 to turn it off")
        if self.dilate < 0 or self.erode < 0:
            raise ClipSegError(f"dilate and erode must be >= 0 pixels, got {self.dilate} and {self.erode}")
        if self.min_area < 0:
            raise ClipSegError(f"min_area must be >= 0 pixels, got {self.min_area}; use 0 to keep all")


def combine(probs: np.ndarray, *, union: bool, negatives: np.ndarray | None, threshold: float) -> np.ndarray:
    """Combine the maps of positive prompts and subtract the maps of negative prompts.

    Union takes the elementwise maximum over the N positive maps (so their masks are the logical
    or). Negative rule: a pixel survives only where no negative prompt fires, i.e. the result is
    p where max over negatives < threshold, and 0 elsewhere. Without union, the negatives are
    applied to each positive map separately.

    Arguments:
      probs: NxHxW probabilities in [0, 1], one map per positive prompt (N >= 1).
      negatives: MxHxW probabilities of the negative prompts, or None (M = 0 is the same).
      threshold: the level at which a negative map fires (value >= threshold).

    Returns:
      float32 1xHxW with union, else NxHxW.
    """
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 3 or probs.shape[0] == 0:
        raise ValueError(f"probs must be NxHxW with N >= 1, got shape {probs.shape}")
    out = probs.max(axis=0, keepdims=True) if union else probs
    if negatives is None or len(negatives) == 0:
        return out
    negatives = np.asarray(negatives, dtype=np.float32)
    if negatives.ndim != 3 or negatives.shape[1:] != probs.shape[1:]:
        raise ValueError(f"negatives must be MxHxW matching {probs.shape[1:]}, got {negatives.shape}")
    return zero_where(out, any_at_or_above(negatives, threshold))


def any_at_or_above(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Where any of several maps reaches the threshold (the negatives' region, the rule of `combine`).

    Arguments:
      probs: MxHxW probabilities (M >= 1).
      threshold: the mask threshold.

    Returns:
      HxW bool, true where some map is >= threshold.
    """
    return (probs >= threshold).any(axis=0)


def zero_where(prob: np.ndarray, negative_region: np.ndarray | None) -> np.ndarray:
    """Set a map to 0 where a negative prompt fires.

    Arguments:
      prob: ...xHxW probabilities.
      negative_region: HxW bool from `any_at_or_above`, or None for no negatives.

    Returns:
      The map (``prob`` itself without negatives).
    """
    return prob if negative_region is None else np.where(negative_region, np.float32(0.0), prob)


def make_mask(prob: np.ndarray, post: PostProcess) -> np.ndarray:
    """Turn one probability map into a mask.

    Steps, in this order: Gaussian blur of the probabilities (sigma `post.blur`, mirror padding),
    threshold (prob >= threshold), dilate, erode (square element), drop 8-connected components
    smaller than `min_area`, invert.

    Arguments:
      prob: HxW probabilities.
      post: the settings.

    Returns:
      HxW bool mask.
    """
    return clean_mask(_blurred(prob, post) >= post.threshold, post)


def mask_and_map(prob: np.ndarray, post: PostProcess) -> tuple[np.ndarray, np.ndarray]:
    """The mask M of `make_mask` and the map m that soft outputs show, by one rule.

    m is the blurred probability (1 - it with ``invert``), set to 0 where a mask step (dilate,
    erode, min_area) removed a pixel of the thresholded mask, in the same (inverted or not)
    space. With no mask steps m is the (blurred, inverted) probability itself.

    Arguments:
      prob: HxW probabilities (after prompt algebra).

    Returns:
      (HxW bool mask, HxW float32 map in [0, 1]).
    """
    prob = _blurred(prob, post)
    thresholded = prob >= post.threshold
    mask = clean_mask(thresholded, post)
    soft = np.subtract(np.float32(1.0), prob) if post.invert else prob
    if post.dilate or post.erode or post.min_area > 1:
        removed = (~thresholded if post.invert else thresholded) & ~mask
        soft = np.where(removed, np.float32(0.0), soft)
    return mask, soft


def _blurred(prob: np.ndarray, post: PostProcess) -> np.ndarray:
    """Returns: the HxW float32 probabilities, blurred by ``post.blur``."""
    prob = np.asarray(prob, dtype=np.float32)
    if prob.ndim != 2:
        raise ValueError(f"prob must be HxW, got shape {prob.shape}")
    return gaussian_blur(prob, post.blur) if post.blur > 0 else prob


def clean_mask(mask: np.ndarray, post: PostProcess) -> np.ndarray:
    """The steps of `make_mask` after the threshold: dilate, erode, drop small components, invert.

    Returns:
      HxW bool mask.
    """
    mask = erode(dilate(mask, post.dilate), post.erode)
    if post.min_area > 1:
        mask = remove_small_components(mask, post.min_area)
    return ~mask if post.invert else mask


def stats(mask: np.ndarray, prob: np.ndarray) -> dict:
    """Summarise a mask for reports; all values are plain Python numbers (JSON-serialisable).

    Arguments:
      mask: HxW bool mask.
      prob: HxW probabilities the mask came from.

    Returns:
      {"coverage": fraction of pixels in the mask,
       "bbox": [x0, y0, x1, y1] with x1, y1 exclusive, or None when the mask is empty,
       "mean_probability": mean of prob inside the mask, or None when the mask is empty}.
    """
    mask = np.asarray(mask, dtype=bool)
    prob = np.asarray(prob)
    if mask.shape != prob.shape or mask.ndim != 2:
        raise ValueError(f"mask {mask.shape} and prob {prob.shape} must be the same HxW shape")
    count = int(np.count_nonzero(mask))
    if count == 0:
        return {"coverage": 0.0, "bbox": None, "mean_probability": None}
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return {
        "coverage": count / mask.size,
        "bbox": [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1],
        "mean_probability": float(prob.sum(where=mask, dtype=np.float64)) / count,
    }


def gaussian_kernel(sigma: float, radius: int | None = None) -> np.ndarray:
    """Returns: float32 1-D Gaussian of length 2 radius + 1 summing to 1 (radius: ceil(4 sigma))."""
    if radius is None:
        radius = max(1, math.ceil(GAUSSIAN_TRUNCATE * sigma))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).astype(np.float32)


def gaussian_blur(array: np.ndarray, sigma: float, *, radius: int | None = None) -> np.ndarray:
    """Separable Gaussian blur over the last two axes, mirror padding (edge pixel not repeated).

    OpenCV's ``GaussianBlur`` with ``BORDER_REFLECT_101``; a kernel as wide as the image or wider
    is folded onto the mirrored image instead (`_blur_folded`), which OpenCV cannot do.

    Arguments:
      array: ...xHxW numbers.
      sigma: standard deviation in pixels; <= 0 returns the input as float32.
      radius: kernel half-width; default ceil(4 sigma).

    Returns:
      float32 array of the same shape.
    """
    array = np.asarray(array, dtype=np.float32)
    if sigma <= 0:
        return array
    *lead, h, w = array.shape
    if radius is None:
        radius = max(1, math.ceil(GAUSSIAN_TRUNCATE * sigma))
    planes = array.reshape(-1, h, w)
    if radius >= min(h, w):  # wider than the image: fold the kernel onto the mirrored image instead of padding
        return _blur_folded(_blur_folded(planes, sigma, radius, 1), sigma, radius, 2).reshape(*lead, h, w)
    size = (2 * radius + 1, 2 * radius + 1)
    blurred = [cv2.GaussianBlur(np.ascontiguousarray(plane), size, sigma, sigmaY=sigma,
                                borderType=cv2.BORDER_REFLECT_101) for plane in planes]
    return np.stack(blurred).reshape(*lead, h, w)


def _blur_folded(planes: np.ndarray, sigma: float, radius: int, axis: int) -> np.ndarray:
    """One blur pass along an axis for kernels wider than the image, exactly as unbounded mirror padding.

    Mirror padding makes a signal of length n periodic with period 2(n - 1), so the kernel is
    folded onto one period and applied as a circular convolution (FFT): memory and time follow
    the image, not the radius. Past sigma = period the folded kernel is flat to within 1e-8, so
    larger sigmas are computed as that one (the result is then the mirrored mean).

    Returns:
      float32 array of the same shape.
    """
    n = planes.shape[axis]
    if n == 1:  # a mirrored single pixel is constant
        return planes
    period = 2 * (n - 1)
    if sigma > period:
        sigma, radius = period, math.ceil(GAUSSIAN_TRUNCATE * period)
    taps = np.arange(-radius, radius + 1)
    folded = np.bincount(taps % period, weights=gaussian_kernel(sigma, radius).astype(np.float64), minlength=period)
    mirrored = np.take(planes, np.r_[0:n, n - 2 : 0 : -1], axis=axis)
    shape = [1] * planes.ndim
    shape[axis] = period // 2 + 1
    spectrum = np.fft.rfft(mirrored, axis=axis) * np.fft.rfft(folded).reshape(shape)
    return np.take(np.fft.irfft(spectrum, n=period, axis=axis), np.arange(n), axis=axis).astype(np.float32)


def dilate(mask: np.ndarray, px: int) -> np.ndarray:
    """Returns: the HxW bool mask grown by px pixels (square element, outside is background).

    A radius past the image's size gives the result of the image's size, and is clamped to it.
    """
    mask = np.asarray(mask, dtype=bool)
    px = min(px, max(mask.shape))
    if px <= 0:
        return mask
    if px > OPENCV_MAX_RADIUS:
        return _window_any(_window_any(mask, px, axis=0), px, axis=1)
    return cv2.dilate(_as_uint8(mask), _square(px), borderType=cv2.BORDER_CONSTANT, borderValue=0).view(bool)


def erode(mask: np.ndarray, px: int) -> np.ndarray:
    """Returns: the HxW bool mask shrunk by px pixels (dual of `dilate`, outside is foreground)."""
    mask = np.asarray(mask, dtype=bool)
    px = min(px, max(mask.shape))
    if px <= 0:
        return mask
    if px > OPENCV_MAX_RADIUS:
        return ~dilate(~mask, px)
    return cv2.erode(_as_uint8(mask), _square(px)).view(bool)  # OpenCV's default border never erodes


def _square(px: int) -> np.ndarray:
    """Returns: the (2 px + 1) x (2 px + 1) square structuring element."""
    return cv2.getStructuringElement(cv2.MORPH_RECT, (2 * px + 1, 2 * px + 1))


def _as_uint8(mask: np.ndarray) -> np.ndarray:
    """Returns: the HxW bool mask as 0/1 uint8, without a copy where it is contiguous."""
    return np.ascontiguousarray(mask).view(np.uint8)


def _window_any(mask: np.ndarray, radius: int, axis: int) -> np.ndarray:
    """Running OR over a centred window of 2 radius + 1 along one axis, by doubling spans."""
    size = 2 * radius + 1
    a = np.moveaxis(mask, axis, 0)
    n = a.shape[0]
    a = np.concatenate([np.zeros((radius, *a.shape[1:]), bool), a, np.zeros((radius, *a.shape[1:]), bool)])
    # after each step a[i] is the OR of the span rows i .. i + span - 1
    span = 1
    while span * 2 <= size:
        a = a[:-span] | a[span:]
        span *= 2
    out = a[:n] | a[size - span : size - span + n]
    return np.ascontiguousarray(np.moveaxis(out, 0, axis))


def remove_small_components(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Drop 8-connected foreground components with fewer than min_area pixels.

    Returns:
      HxW bool mask.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask.copy()
    count, labels = cv2.connectedComponents(_as_uint8(mask), connectivity=8, ltype=cv2.CV_32S)
    keep = np.bincount(labels.ravel(), minlength=count) >= min_area
    keep[0] = False  # the background
    return mask.copy() if keep[1:].all() else keep[labels]
