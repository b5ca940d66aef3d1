"""Instances from masks: the 8-connected components of each class's mask (after the mask steps), each with
its exact area and box, its score (the mean of the map over it) and its mask as compressed COCO RLE."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np


@dataclass
class Instance:
    """One region of one class in one image.

    category: the class's index (from 0).
    area: its pixel count.
    bbox: x, y, width, height of the smallest box holding it (pixels).
    score: the mean of the class's map over it.
    rle: its mask as compressed COCO RLE counts (pycocotools' string).
    mask: HxW bool, while the image's files are written (not stored).
    """

    category: int
    area: int
    bbox: tuple[int, int, int, int]
    score: float
    rle: str
    mask: np.ndarray | None = field(default=None, repr=False)

    def to_record(self) -> dict:
        return {"category": self.category, "area": self.area, "bbox": list(self.bbox), "score": self.score,
                "rle": self.rle}

    @classmethod
    def from_record(cls, record: dict) -> Instance:
        return cls(record["category"], record["area"], tuple(record["bbox"]), record["score"], record["rle"])


def encode_rle(mask: np.ndarray) -> str:
    """Returns: the compressed COCO RLE counts of an HxW bool mask (pycocotools' `encode`)."""
    from pycocotools import mask as coco_mask

    return coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode("ascii")


def decode_rle(counts: str, size: tuple[int, int]) -> np.ndarray:
    """Returns: the HxW bool mask of compressed COCO RLE counts, for an image of (width, height)."""
    from pycocotools import mask as coco_mask

    return coco_mask.decode({"size": [size[1], size[0]], "counts": counts.encode("ascii")}).astype(bool)


def instances(category: int, mask: np.ndarray, soft: np.ndarray, *, semantic: bool = False) -> list[Instance]:
    """The regions of one class's mask: each 8-connected component, or the whole mask with ``semantic``.

    Arguments:
        category: the class's index.
        mask: HxW bool, the mask `clipseg batch` writes.
        soft: HxW float32, the map the mask came from (its mean over a region is the region's score).
        semantic: one region per class (all its components, holes kept).

    Returns:
        The regions in raster order of their first pixel; none when the mask is empty.
    """
    if semantic:
        return [_instance(category, mask, soft)] if mask.any() else []
    count, labels = cv2.connectedComponents(mask.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    return [_instance(category, labels == number, soft) for number in range(1, count)]


def _instance(category: int, region: np.ndarray, soft: np.ndarray) -> Instance:
    area = int(np.count_nonzero(region))
    rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
    bbox = (int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1))
    score = round(float(soft.sum(where=region, dtype=np.float64)) / area, 6)
    return Instance(category, area, bbox, score, encode_rle(region), region)


def winning_class(masks: Sequence[np.ndarray], softs: Sequence[np.ndarray]) -> np.ndarray:
    """One class per pixel: where several classes' masks hold a pixel, the one whose map is highest there
    (the first class on a tie).

    Returns:
        HxW int32: 0 for no class, else the class's index + 1.
    """
    stacked = np.stack([np.where(mask, soft, np.float32(-1.0)) for mask, soft in zip(masks, softs, strict=True)])
    best = stacked.argmax(axis=0).astype(np.int32) + 1
    return np.where(np.logical_or.reduce(list(masks)), best, 0).astype(np.int32)
