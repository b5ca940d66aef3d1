"""The mask maths of a run: from one image's logits to each target's mask M and map m, the same for every entry
point (files, the server's bytes, Ray Data, video frames, datasets).

The prompt algebra (union, negatives) comes first, then the refinement with the image, then the mask steps
(`clipseg_cli.postprocess.mask_and_map`). Full-size maps are made a chunk of prompts at a time, so memory
does not grow with the number of prompts.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from clipseg_cli.postprocess import any_at_or_above, clean_mask, mask_and_map, zero_where
from clipseg_cli.predictor import probabilities, upsample

if TYPE_CHECKING:
    from PIL import Image

    from clipseg_cli.refine import Refiner
    from clipseg_cli.run.outputs import OutputPlan

# Full-size float32 maps made at once per image being written (16 MB), or one map when larger.
CHUNK_VALUES = 1 << 22


@dataclass(frozen=True)
class MaskMaths:
    """What turns logits into masks and maps for one run's targets.

    plan: the files and the mask steps (threshold, blur, dilate, ...).
    prompts: how many positive prompts lead the logits; negatives: how many follow them.
    union: one target, the union of the prompts.
    maps: make the full-size map m even where no file needs it (statistics, soft masks, refinement).
    refiner: refines each map with the image after the prompt algebra, or None.
    """

    plan: OutputPlan
    prompts: int
    negatives: int
    union: bool = False
    maps: bool = True
    refiner: Refiner | None = None

    def masks(self, logits: Any, image: Image.Image, size: tuple[int, int], part: range
               ) -> Iterator[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]:
        """(mask M, map m or None, foreground colours or None) for each target of ``part``, at the
        image's size (see `mask_and_map`).

        Full-size maps are made a chunk of prompts at a time (`map_chunks`); the union and the
        negatives are running maxima, so memory does not grow with the number of prompts.
        """
        post, count = self.plan.post, self.prompts
        if self.union or self.negatives:  # the negatives' region, and the union, need every map
            cut = None
            for chunk in map_chunks(range(count, count + self.negatives), size):
                above = any_at_or_above(probabilities(logits[chunk.start : chunk.stop], size), post.threshold)
                cut = above if cut is None else np.logical_or(cut, above, out=cut)
            if self.union:
                union = None
                for chunk in map_chunks(range(count), size):
                    top = probabilities(logits[chunk.start : chunk.stop], size).max(axis=0)
                    union = top if union is None else np.maximum(union, top, out=union)
                yield self.mask_and_map(zero_where(union, cut), image)
                return
            for chunk in map_chunks(part, size):
                for prob in probabilities(logits[chunk.start : chunk.stop], size):
                    yield self.mask_and_map(zero_where(prob, cut), image)
        elif self.maps:
            for chunk in map_chunks(part, size):
                for prob in probabilities(logits[chunk.start : chunk.stop], size):
                    yield self.mask_and_map(prob, image)
        else:  # sigmoid(x) >= t exactly where x >= logit(t): no full-size sigmoid needed
            cut = math.log(post.threshold / (1 - post.threshold))
            for chunk in map_chunks(part, size):
                for upsampled in upsample(logits[chunk.start : chunk.stop], size):
                    yield clean_mask(np.asarray(upsampled >= cut), post), None, None

    def mask_and_map(self, prob: np.ndarray, image: Image.Image
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Refine one HxW map with the image (when a refiner is set), then `mask_and_map`.

        Returns:
            (HxW bool mask M, HxW float32 map m, HxWx3 uint8 foreground colours for the cut-out or None).
        """
        foreground = None
        if self.refiner is not None:
            refined = self.refiner(image, prob, self.plan.post.threshold)
            prob = refined.map
            if self.plan.cutout and not self.plan.post.invert:  # colours of the object, not of the background
                foreground = refined.foreground
        return (*mask_and_map(prob, self.plan.post), foreground)


def map_chunks(indices: range, size: tuple[int, int]) -> Iterator[range]:
    """``indices`` cut into runs of prompts whose full-size float32 maps, at ``size`` (width, height),
    take at most `CHUNK_VALUES` values together (at least one map per run)."""
    step = max(1, CHUNK_VALUES // max(1, size[0] * size[1]))
    return (range(start, min(start + step, indices.stop)) for start in range(indices.start, indices.stop, step))
