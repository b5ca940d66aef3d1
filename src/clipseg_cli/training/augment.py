"""Augmentation that is safe for prompts: crops that keep every prompted object, flips only where no
prompt names a side. No colour changes: a prompt may name a colour.

A variant is one fixed crop and flip of an image; training draws among a few per image, so that
the frozen image tower's activations of each variant are computed once and cached.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

SIDES = re.compile(r"\b(left|right)", re.IGNORECASE)  # "left", "right", "leftmost", "right-hand"
MIN_CROP = 0.6  # a crop keeps at least this fraction of each side of the image


@dataclass(frozen=True)
class Variant:
    """A crop box (x0, y0, x1, y1) in the upright image, end exclusive, then an optional horizontal flip."""

    box: tuple[int, int, int, int]
    flip: bool = False

    def describe(self) -> str:
        """A text naming the variant exactly (part of cache keys)."""
        return f"crop {self.box} flip {self.flip}"

    def image(self, image: Image.Image) -> Image.Image:
        """Returns: the cropped (and flipped) RGB image."""
        out = image if self.box == (0, 0, *image.size) else image.crop(self.box)
        return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if self.flip else out

    def mask(self, mask: np.ndarray) -> np.ndarray:
        """Returns: the cropped (and flipped) HxW mask."""
        x0, y0, x1, y1 = self.box
        out = mask[y0:y1, x0:x1]
        return out[:, ::-1] if self.flip else out


def object_box(masks: Sequence[np.ndarray]) -> tuple[int, int, int, int] | None:
    """The box around the objects of all masks of one image.

    Returns:
        (x0, y0, x1, y1), end exclusive; None when every mask is empty.
    """
    union = np.logical_or.reduce([np.asarray(m, dtype=bool) for m in masks])
    rows, cols = np.flatnonzero(union.any(axis=1)), np.flatnonzero(union.any(axis=0))
    if not len(rows):
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def can_flip(prompts: Sequence[str]) -> bool:
    """A mirror image changes the meaning of a prompt that names a side ("the left cup")."""
    return not any(SIDES.search(prompt) for prompt in prompts)


def make_variants(size: tuple[int, int], box: tuple[int, int, int, int] | None, flip: bool, count: int,
                  rng: np.random.Generator) -> list[Variant]:
    """The image itself, then ``count - 1`` random crops that contain ``box`` (and flips where allowed).

    Arguments:
        size: (width, height) of the upright image.
        box: the objects' box, or None.

    Returns:
        ``count`` variants; the first is always the whole image, unflipped.
    """
    width, height = size
    variants = [Variant((0, 0, width, height))]
    while len(variants) < count:
        x0, x1 = _span(width, None if box is None else (box[0], box[2]), rng)
        y0, y1 = _span(height, None if box is None else (box[1], box[3]), rng)
        variants.append(Variant((x0, y0, x1, y1), bool(flip and rng.random() < 0.5)))
    return variants


def _span(length: int, keep: tuple[int, int] | None, rng: np.random.Generator) -> tuple[int, int]:
    """A random interval of at least MIN_CROP * length that contains ``keep``.

    Returns:
        (start, end), end exclusive.
    """
    lo, hi = keep if keep is not None else (length, 0)
    smallest = max(1, round(MIN_CROP * length), hi - lo)
    extent = int(rng.integers(smallest, length + 1))
    first = max(0, hi - extent)  # the crop must reach past the object's end ...
    last = min(lo, length - extent)  # ... and start before its beginning
    start = int(rng.integers(first, max(first, last) + 1))
    return start, start + extent
