"""Masks that follow the object's edges: refine a CLIPSeg probability map with the image.

CLIPSeg predicts from a 22 x 22 grid of patches, so its maps are blobs whose edges are off by
tens of pixels on a photo. Methods (``--refine``):

- ``none``: the model's map as it is (the default; outputs equal the reference model's);
- ``guided``: the fast guided filter with the full-resolution image as guide (`guided`): the map's
  edges snap to the image's, ~0.1 s per megapixel;
- ``matting``: real alpha at hair and fur (`matting`, needs pymatting), and foreground colours for
  cut-outs without a fringe of the old background; ~1 s per megapixel;
- ``sam``: Segment Anything prompted from the map's regions (`sam`, a ~112 MB checkpoint).

Use::

    from clipseg_cli.refine import refine_map
    refined = refine_map(image, probs[0], "guided")  # float32 HxW in [0, 1]

The refined map then goes through the usual post-processing (`clipseg_cli.postprocess`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clipseg_cli.constants import DEFAULT_THRESHOLD
from clipseg_cli.errors import ClipSegError

METHODS = ("none", "guided", "matting", "sam")


@dataclass
class Refined:
    """A refined map, and for matting the image with the estimated foreground colours.

    map: HxW float32 in [0, 1].
    foreground: HxWx3 uint8 or None.
    """

    map: np.ndarray
    foreground: np.ndarray | None = None


class Refiner:
    """One refinement method, ready for many images (a SAM checkpoint is loaded once)."""

    def __init__(self, method: str, sam=None) -> None:
        """method: one of METHODS. sam: a `sam.SamRefiner`, required for ``sam``."""
        check_method(method)
        if method == "sam" and sam is None:
            raise ClipSegError("--refine sam needs a SAM checkpoint; load one with SamRefiner.from_pretrained")
        if method == "matting":
            from clipseg_cli.refine.matting import require_pymatting

            require_pymatting()
        self.method = method
        self.sam = sam

    @property
    def name(self) -> str:
        """What ran, for JSON records and fingerprints: the method, and for SAM its checkpoint."""
        return f"sam:{self.sam.identity}" if self.method == "sam" else self.method

    def __call__(self, image, prob: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> Refined:
        """Refine one map.

        Arguments:
            image: PIL image or HxWx3 uint8 RGB array, the same size as ``prob``.
            prob: HxW float32 probabilities in [0, 1].
            threshold: where the map's regions are cut (SAM's prompts only).

        Returns:
            A Refined.
        """
        prob = np.asarray(prob, dtype=np.float32)
        pixels = _rgb(image)
        if pixels.shape[:2] != prob.shape:
            raise ValueError(f"image {pixels.shape[:2]} and prob {prob.shape} must have the same HxW")
        if self.method == "none":
            return Refined(prob)
        if self.method == "guided":
            from clipseg_cli.refine.guided import guided_refine

            return Refined(guided_refine(pixels, prob))
        if self.method == "matting":
            from clipseg_cli.refine.matting import matte

            result = matte(pixels, prob)
            return Refined(result.alpha, result.foreground)
        return Refined(self.sam.refine(image, prob, threshold))


def check_method(method: str) -> None:
    """Refuse an unknown method, listing the choices."""
    if method not in METHODS:
        raise ClipSegError(f"unknown refinement {method!r}; use one of {', '.join(METHODS)}")


def check_available(method: str) -> None:
    """Refuse, before any model loads, a method that is unknown or whose library is missing."""
    check_method(method)
    if method == "matting":
        from clipseg_cli.refine.matting import require_pymatting

        require_pymatting()


def load_refiner(method: str, *, sam_weights: str | None = None, device: str = "cpu", offline: bool | None = None,
                 progress: bool = True) -> Refiner | None:
    """The Refiner for ``method`` (None for ``none``), loading the SAM checkpoint when needed.

    Returns:
        A Refiner, or None.
    """
    check_method(method)
    if method == "none":
        return None
    sam = None
    if method == "sam":
        from clipseg_cli.refine.sam import DEFAULT_SAM, SamRefiner

        sam = SamRefiner.from_pretrained(sam_weights or DEFAULT_SAM, device=device, offline=offline,
                                         progress=progress)
    return Refiner(method, sam)


def refine_map(image, prob: np.ndarray, method: str = "guided", *, threshold: float = DEFAULT_THRESHOLD,
               sam=None) -> np.ndarray:
    """Refine a CLIPSeg probability map so that its edges follow the image's.

    Arguments:
        image: PIL image or HxWx3 uint8 RGB array.
        prob: HxW float32 probabilities in [0, 1] at the image's size (one map of ``Segmenter.predict``).
        method: none, guided, matting or sam.
        threshold: the level at which SAM's prompt regions are cut (sam only).
        sam: a loaded `sam.SamRefiner` (default: the default checkpoint, loaded on each call; load
            one with ``SamRefiner.from_pretrained`` to refine many images).

    Returns:
        HxW float32 map in [0, 1].
    """
    check_method(method)
    if method == "sam" and sam is None:
        from clipseg_cli.refine.sam import SamRefiner

        sam = SamRefiner.from_pretrained()
    return Refiner(method, sam)(image, prob, threshold).map


def _rgb(image) -> np.ndarray:
    """Returns: HxWx3 uint8 RGB pixels of a PIL image or an array."""
    if hasattr(image, "convert"):
        image = image.convert("RGB")
    pixels = np.asarray(image)
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"image must be HxWx3 uint8 RGB, got {pixels.dtype} {pixels.shape}")
    return pixels
