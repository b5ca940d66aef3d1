"""The CLIPSeg paper's best visual prompt: crop, blur, highlight, step for step as the original code.

The published weights (rd64-uni, rd64-uni-refined) were trained with the mask mode
"crop_blur_highlight352" of timojl/clipseg (``datasets/phrasecut.py`` ``load_sample``, then
``evaluation_utils.py`` ``img_preprocess`` with blur=3, center_context=0.1, bg_fac=0.1):

1. the example is squashed to the model input size (bilinear, align_corners=True, on 0..255),
   rescaled and normalised; its mask is squashed with nearest;
2. the normalised image is blurred (OpenCV's 15x15 Gaussian, sigma 3, reflect-101 border);
3. object pixels keep their values, background pixels become 0.1 x blurred (normalised space:
   faded towards the mean colour);
4. the result is cropped to the mask's box grown by 0.1 of its extent (truncated to integers),
   padded to a square with 0 (the mean colour) and resized with nearest to the input size.

The result is already the model's input: it goes to the image tower without further preprocessing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np
from PIL import Image

from clipseg_cli.errors import ClipSegError
from clipseg_cli.imaging.preprocess import Preprocessing

if TYPE_CHECKING:  # torch is imported where a visual prompt is prepared, not to name one
    import torch

CONTEXT = 0.1  # fraction of the object's extent kept around it on each side
BLUR_KERNEL = 15  # cv2.GaussianBlur(img, (15, 15), 3)
BLUR_SIGMA = 3.0
BACKGROUND_FACTOR = 0.1  # bg_fac: background = 0.1 x blurred, in normalised space


@dataclass(frozen=True, eq=False)
class VisualPrompt:
    """An example image and the mask of its object: a prompt the Segmenter prepares at its own input size.

    Build it with `visual_prompt`, which checks the mask.
    """

    image: Image.Image  # RGB
    mask: np.ndarray  # HxW bool, same size as the image, not empty

    def key(self) -> str:
        """Returns: a string that identifies the image and mask (for the embedding cache)."""
        digest = hashlib.sha1(self.image.tobytes())
        digest.update(np.packbits(self.mask).tobytes())
        return f"visual:{self.image.size}:{digest.hexdigest()}"


def visual_prompt(image: Image.Image, mask: Image.Image | np.ndarray) -> VisualPrompt:
    """Check an example image and its object's mask and pair them as a prompt.

    Arguments:
      image: the example, any mode (converted to RGB).
      mask: the object's mask, same size as the image: a PIL image (foreground where its grey
        value is >= 128) or an HxW array (bool; floats >= 0.5; integers > 0 when the maximum is 1,
        else >= 128).

    Returns:
      The prompt.
    """
    rgb = image.convert("RGB")
    fg = _foreground(mask)
    if fg.shape != (rgb.height, rgb.width):
        raise ClipSegError(
            f"prompt mask is {fg.shape[1]}x{fg.shape[0]} but the prompt image is "
            f"{rgb.width}x{rgb.height}; give a mask of the same size as its image"
        )
    if not fg.any():
        raise ClipSegError("prompt mask is empty: it must mark the object in the prompt image")
    return VisualPrompt(rgb, fg)


def prepare_visual_prompt(prompt: VisualPrompt, preprocessing: Preprocessing) -> torch.Tensor:
    """The model input for a visual prompt, as the original code computes it (see the module notes).

    Arguments:
      prompt: the example image and its object's mask.
      preprocessing: the checkpoint's (input size, rescale factor, mean and std).

    Returns:
      3xHxW float32 tensor, normalised, at the model input size (H, W) = preprocessing.size.
    """
    import torch
    import torch.nn.functional as F

    size = preprocessing.size
    pixels = torch.from_numpy(np.asarray(prompt.image, dtype=np.float32).transpose(2, 0, 1).copy())
    image = F.interpolate(pixels[None], size, mode="bilinear", align_corners=True)[0] * preprocessing.rescale
    mean, std = (torch.tensor(v, dtype=torch.float32)[:, None, None] for v in (preprocessing.mean, preprocessing.std))
    image = (image - mean) / std
    mask = F.interpolate(torch.from_numpy(prompt.mask)[None, None].float(), size, mode="nearest")[0, 0]
    if not mask.any():
        raise ClipSegError(f"prompt mask's object vanishes when squashed to the model's {size[1]}x{size[0]} input; "
                           "mark a larger object")
    highlighted = image * mask + BACKGROUND_FACTOR * gaussian_blur_cv2(image) * (1 - mask)
    top, bottom, left, right = crop_box(mask, CONTEXT)
    square = pad_to_square(highlighted[:, top:bottom, left:right])
    return F.interpolate(square[None], size, mode="nearest")[0]


def gaussian_blur_cv2(image: torch.Tensor) -> torch.Tensor:
    """``cv2.GaussianBlur(image, (15, 15), 3)`` with its default border, reflect-101 (edge pixel not repeated).

    Arguments:
      image: CxHxW float32.

    Returns:
      CxHxW float32.
    """
    import torch

    channels_last = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
    blurred = cv2.GaussianBlur(channels_last, (BLUR_KERNEL, BLUR_KERNEL), BLUR_SIGMA, borderType=cv2.BORDER_REFLECT_101)
    return torch.from_numpy(blurred.reshape(channels_last.shape)).permute(2, 0, 1)


def crop_box(mask: torch.Tensor, context: float) -> tuple[int, int, int, int]:
    """The original ``crop_mask``: the mask's box grown by ``context`` times its extent, truncated.

    Arguments:
      mask: HxW, non-empty.

    Returns:
      (top, bottom, left, right), bottom and right exclusive.
    """
    import torch

    rows, cols = torch.nonzero(mask.any(dim=1))[:, 0], torch.nonzero(mask.any(dim=0))[:, 0]
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    height, width = bottom - top, right - left
    return (int(max(0, top - context * height)), int(min(mask.shape[0], bottom + context * height)),
            int(max(0, left - context * width)), int(min(mask.shape[1], right + context * width)))


def pad_to_square(image: torch.Tensor) -> torch.Tensor:
    """The original ``pad_to_square``: pad the shorter side with 0, half before (rounded down), half after.

    Arguments:
      image: CxHxW.

    Returns:
      CxSxS with S = max(H, W).
    """
    import torch.nn.functional as F

    height, width = image.shape[1:]
    across, down = max(0, height - width), max(0, width - height)
    return F.pad(image, (across // 2, across - across // 2, down // 2, down - down // 2))


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

