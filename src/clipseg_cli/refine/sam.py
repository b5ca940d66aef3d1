"""Segment Anything, prompted from CLIPSeg's map: CLIPSeg says what, SAM says where the edges are.

For each region of the thresholded map (8-connected, the largest ``MAX_REGIONS``, none below
``MIN_REGION`` of the image), SAM gets the region's box and ``POINTS`` positive points: the
innermost pixel of the region (the maximum of its distance to the region's edge), then the
innermost pixel left after clearing a disc around each point taken. SAM's masks (one per region,
``multimask_output=False``) are combined by the pixelwise maximum of their probabilities.

CLIPSeg's map is not given as SAM's mask prompt: SAM's mask input was trained on SAM's own
low-resolution logits (for iterative refinement), and a blob from 22 x 22 patches is not that.

Runs through transformers' ``SamModel`` and ``SamProcessor``; the image embedding is computed once
per image and reused for every prompt of that image.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipseg_cli.constants import DEFAULT_SAM_MODEL as DEFAULT_SAM
from clipseg_cli.errors import ClipSegError

POINTS = 3
MAX_REGIONS = 8
MIN_REGION = 1e-3  # fraction of the image's pixels


@dataclass
class SamPrompts:
    """SAM prompts for one image, in the image's pixel coordinates (x, y).

    boxes: N boxes [x0, y0, x1, y1].
    points: N lists of ``POINTS`` points [x, y].
    labels: N lists of 1s.
    """

    boxes: list[list[float]]
    points: list[list[list[float]]]
    labels: list[list[int]]


def region_prompts(prob: np.ndarray, threshold: float, *, points: int = POINTS) -> SamPrompts:
    """A box and positive points for each region of ``prob >= threshold``.

    Arguments:
        prob: HxW float32 probabilities.

    Returns:
        SamPrompts, largest region first (empty lists when no region is large enough).
    """
    import cv2

    mask = (prob >= threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = [i for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] >= MIN_REGION * mask.size]
    keep = sorted(keep, key=lambda i: -stats[i, cv2.CC_STAT_AREA])[:MAX_REGIONS]
    prompts = SamPrompts([], [], [])
    for i in keep:
        x, y, w, h = (int(v) for v in stats[i, :4])
        region = np.pad(labels[y : y + h, x : x + w] == i, 1).astype(np.uint8)
        prompts.boxes.append([float(x), float(y), float(x + w), float(y + h)])
        prompts.points.append([[px + x, py + y] for px, py in _inner_points(region, points)])
        prompts.labels.append([1] * points)
    return prompts


def _inner_points(region: np.ndarray, count: int) -> list[tuple[float, float]]:
    """``count`` points deep inside a region (padded by one pixel), as (x, y) in the unpadded crop."""
    import cv2

    distance = cv2.distanceTransform(region, cv2.DIST_L2, 5)
    found: list[tuple[float, float]] = []
    while len(found) < count:
        y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
        depth = float(distance[y, x])
        if depth <= 0:  # the region is used up: repeat the last point
            found.append(found[-1])
            continue
        found.append((float(x - 1), float(y - 1)))
        cv2.circle(distance, (int(x), int(y)), max(1, round(depth)), 0.0, -1)
    return found


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Load without transformers' progress bar and notes (e.g. its PIL fallback without torchvision):
    our own progress and errors are what the user sees."""
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


class SamRefiner:
    """A SAM checkpoint loaded once, turning CLIPSeg maps into SAM's masks (`refine`)."""

    def __init__(self, model, processor, *, identity: str = "") -> None:
        """model: a transformers SamModel (eval mode). processor: its SamProcessor. identity: for fingerprints."""
        self.model = model
        self.processor = processor
        self.identity = identity
        self._lock = threading.Lock()
        self._cached: tuple[object, object] | None = None  # (image, its embedding)

    @classmethod
    def from_pretrained(cls, name: str = DEFAULT_SAM, *, device: str = "cpu", offline: bool | None = None,
                        revision: str | None = None, progress: bool = True) -> SamRefiner:
        """Load a SAM checkpoint: a published name, a hub id, or a folder (fetched like CLIPSeg's weights).

        Returns:
            A SamRefiner on ``device``.
        """
        from transformers import SamModel, SamProcessor

        from clipseg_cli.checkpoints.download import locate
        from clipseg_cli.fingerprint import checkpoint_digest

        folder = locate(name, revision=revision, offline=offline, progress=progress)
        try:
            with _quiet_transformers():
                model = SamModel.from_pretrained(folder).to(device).eval()
                processor = SamProcessor.from_pretrained(folder)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            summary = (str(exc).strip().splitlines() or [""])[0]
            raise ClipSegError(f"{name}: not a loadable SAM checkpoint ({type(exc).__name__}: {summary}); "
                               "fetch one with: clipseg download-weights " + DEFAULT_SAM) from exc
        return cls(model, processor, identity=f"{Path(name).name}:{checkpoint_digest(folder)}")

    def refine(self, image, prob: np.ndarray, threshold: float) -> np.ndarray:
        """SAM's masks for the regions of ``prob >= threshold``.

        Arguments:
            image: PIL image or HxWx3 uint8 RGB.
            prob: HxW float32 probabilities.

        Returns:
            HxW float32 map: the pixelwise max of SAM's mask probabilities (``prob`` when no region).
        """
        prompts = region_prompts(prob, threshold)
        if not prompts.boxes:
            return prob
        with self._lock:
            return self._predict(image, prompts)

    def _predict(self, image, prompts: SamPrompts) -> np.ndarray:
        import torch

        inputs = self.processor(images=image, input_boxes=[prompts.boxes], input_points=[prompts.points],
                                input_labels=[prompts.labels], return_tensors="pt")
        device = self.model.device
        with torch.inference_mode():
            if self._cached is None or self._cached[0] is not image:
                self._cached = (image, self.model.get_image_embeddings(inputs["pixel_values"].to(device)))
            out = self.model(image_embeddings=self._cached[1], input_boxes=inputs["input_boxes"].to(device),
                             input_points=inputs["input_points"].to(device),
                             input_labels=inputs["input_labels"].to(device), multimask_output=False)
        logits = self.processor.post_process_masks(out.pred_masks.cpu(), inputs["original_sizes"],
                                                   inputs["reshaped_input_sizes"], binarize=False)[0]
        return torch.sigmoid(logits.float()).amax(dim=(0, 1)).numpy()
