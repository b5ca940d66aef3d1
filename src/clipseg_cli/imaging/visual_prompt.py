"""The CLIPSeg paper's best visual prompt: crop, blur, highlight.

This follows the original training code (timojl/clipseg, mask mode "crop_blur_highlight352",
used for the published rd64-uni and rd64-uni-refined weights), which works on images already
normalised with the ImageNet mean and std:

- the whole example is blurred with a Gaussian (sigma 3, 15x15 kernel, mirrored border);
- object pixels keep their values, background pixels become ``darken * blurred`` in normalised
  space, i.e. ``mean + darken * (blurred - mean)`` in pixel space: the background keeps 10 % of
  its contrast around the ImageNet mean grey (bright backgrounds get darker);
- the result is cropped to the mask's bounding box grown by ``context`` times the box's extent
  on each side (clipped to the image) and padded to a square with the mean grey (a normalised 0).

The model's own preprocessing then resizes and normalises the returned image as for any image.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from clipseg_cli.constants import IMAGE_MEAN
from clipseg_cli.errors import ClipSegError
from clipseg_cli.postprocess import gaussian_blur

# The original blurs with a 15x15 kernel at sigma 3: half-width 7 = 7/3 sigma.
_RADIUS_PER_SIGMA = 7 / 3
# The normalised zero of the published checkpoints, as an RGB colour.
MEAN_RGB = tuple(round(255 * m) for m in IMAGE_MEAN)


def prepare_visual_prompt(
    image: Image.Image,
    mask: Image.Image | np.ndarray | None,
    *,
    context: float = 0.1,
    blur_sigma: float = 3.0,
    darken: float = 0.1,
) -> Image.Image:
    """Turn an example image and the mask of its object into a visual prompt.

    Arguments:
      image: the example, any mode (converted to RGB).
      mask: the object's mask, same size as the image: a PIL image (foreground where its
        grey value is >= 128) or an HxW array (bool; floats >= 0.5; integers > 0 when the
        maximum is 1, else >= 128). None returns the image unchanged (as RGB).
      context: fraction of the box's width (height) added left and right (above and below).
      blur_sigma: Gaussian sigma in pixels for the background; 0 turns blurring off.
      darken: factor on the background's deviation from the mean grey; 1 keeps it as is.

    Returns:
      RGB image, square, of the cropped object with its background faded.
    """
    if context < 0 or blur_sigma < 0 or darken < 0:
        raise ClipSegError(f"context, blur_sigma and darken must be >= 0, got {context}, {blur_sigma}, {darken}")
    rgb = image.convert("RGB")
    if mask is None:
        return rgb
    fg = _foreground(mask)
    if fg.shape != (rgb.height, rgb.width):
        raise ClipSegError(
            f"prompt mask is {fg.shape[1]}x{fg.shape[0]} but the prompt image is "
            f"{rgb.width}x{rgb.height}; give a mask of the same size as its image"
        )
    rows, cols = np.flatnonzero(fg.any(axis=1)), np.flatnonzero(fg.any(axis=0))
    if len(rows) == 0:
        raise ClipSegError("prompt mask is empty: it must mark the object in the prompt image")
    # crop box: bounding box grown by context on each side, clipped to the image
    top, bottom = _grow(int(rows[0]), int(rows[-1]) + 1, context, rgb.height)
    left, right = _grow(int(cols[0]), int(cols[-1]) + 1, context, rgb.width)
    # blur only what the crop needs: the box plus the kernel's reach
    radius = max(1, math.ceil(_RADIUS_PER_SIGMA * blur_sigma))
    y0, y1 = max(0, top - radius), min(rgb.height, bottom + radius)
    x0, x1 = max(0, left - radius), min(rgb.width, right + radius)
    pixels = np.asarray(rgb)[y0:y1, x0:x1]
    blurred = pixels.astype(np.float32)
    if blur_sigma > 0:
        blurred = gaussian_blur(blurred.transpose(2, 0, 1), blur_sigma, radius=radius).transpose(1, 2, 0)
    # highlight: fade the background towards the mean grey
    mean = np.asarray(MEAN_RGB, dtype=np.float32)
    background = np.clip(np.rint(mean + darken * (blurred - mean)), 0, 255).astype(np.uint8)
    prompt = np.where(fg[y0:y1, x0:x1, None], pixels, background)
    crop = prompt[top - y0 : bottom - y0, left - x0 : right - x0]
    return _pad_to_square(Image.fromarray(np.ascontiguousarray(crop)), MEAN_RGB)


def _foreground(mask: Image.Image | np.ndarray) -> np.ndarray:
    """HxW bool foreground of a mask given as a PIL image or an array."""
    if isinstance(mask, Image.Image):
        return np.asarray(mask.convert("L")) >= 128
    array = np.asarray(mask)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim != 2:
        raise ClipSegError(f"prompt mask must be a single-channel HxW array, got shape {array.shape}")
    if array.dtype == bool:
        return array
    if np.issubdtype(array.dtype, np.floating):
        return array >= 0.5
    return array > 0 if array.size and array.max() <= 1 else array >= 128


def _grow(start: int, stop: int, context: float, limit: int) -> tuple[int, int]:
    """Grow [start, stop) by context * (stop - start) on both sides, clipped to [0, limit)."""
    margin = context * (stop - start)
    return max(0, math.floor(start - margin)), min(limit, math.ceil(stop + margin))


def _pad_to_square(image: Image.Image, fill: tuple[int, ...]) -> Image.Image:
    """Centre the image on a square canvas of its longer side, filled with fill."""
    side = max(image.size)
    if image.width == image.height:
        return image
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return canvas
