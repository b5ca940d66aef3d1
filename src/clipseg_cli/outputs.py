"""What is written for each image and prompt: names, files, per-mask statistics."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from clipseg_cli.constants import OUTPUT_KINDS
from clipseg_cli.imaging.writing import cutout, overlay, probability_to_image, save_mask_png, save_png
from clipseg_cli.postprocess import PostProcess

SLUG_LENGTH = 60


@dataclass(frozen=True)
class OutputPlan:
    """Which files to write per (image, prompt) and how a probability map becomes a mask.

    mask: always written; binary 0/255, or with ``soft`` the probability as 8-bit grey.
    overlay: the image with the mask tinted. cutout: RGBA, the mask as alpha.
    """

    overlay: bool = True
    soft: bool = False
    cutout: bool = False
    post: PostProcess = field(default_factory=PostProcess)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(kind for kind, on in zip(OUTPUT_KINDS, (True, self.overlay, self.cutout), strict=True) if on)

    @property
    def needs_probabilities(self) -> bool:
        """Soft outputs and blur work on probabilities; plain masks can be thresholded on logits."""
        return self.soft or self.post.blur > 0 or self.post.threshold >= 1

    @property
    def needs_full_image(self) -> bool:
        """Overlays and cut-outs need the image's pixels at full size; masks only its size."""
        return self.overlay or self.cutout


def slugify(text: str) -> str:
    """A file-name-safe label: ASCII letters, digits and dashes, at most 60 characters.

    Returns:
        The slug, or "prompt" for a text with no usable characters.
    """
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")[:SLUG_LENGTH].strip("-")
    return slug or "prompt"


def unique_labels(names: list[str]) -> list[str]:
    """Slugs of the names, made distinct: a repeated slug gets -2, -3, ... in order.

    Returns:
        One label per name.
    """
    labels: list[str] = []
    for name in names:
        base = label = slugify(name)
        count = 1
        while label in labels:
            count += 1
            label = f"{base}-{count}"
        labels.append(label)
    return labels


def output_paths(directory: Path, stem: str, label: str, plan: OutputPlan) -> dict[str, Path]:
    """Where the files of one (image, prompt) go: ``{stem}.{label}.{kind}.png``.

    Returns:
        Path per output kind of the plan.
    """
    return {kind: directory / f"{stem}.{label}.{kind}.png" for kind in plan.kinds}


def write_outputs(image: Image.Image | None, mask: np.ndarray, prob: np.ndarray | None, paths: dict[str, Path],
                  plan: OutputPlan) -> None:
    """Write the files of one mask atomically.

    Arguments:
        image: the RGB image at full size (needed only for overlays and cut-outs).
        mask: HxW bool, the post-processed mask. prob: HxW float32 probabilities at the image's
            size (needed only when ``plan.needs_probabilities``).
    """
    paths["mask"].parent.mkdir(parents=True, exist_ok=True)
    if plan.soft:
        save_png(probability_to_image(prob), paths["mask"])
    else:
        save_mask_png(mask, paths["mask"])
    if "overlay" in paths:
        save_png(overlay(image, mask), paths["overlay"])
    if "cutout" in paths:
        save_png(cutout(image, prob if plan.soft else mask), paths["cutout"])
