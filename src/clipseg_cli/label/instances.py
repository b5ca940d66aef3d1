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
    crop: its mask within its box (height x width bool), while the image's files are written (not stored).
    """

    category: int
    area: int
    bbox: tuple[int, int, int, int]
    score: float
    rle: str
    crop: np.ndarray | None = field(default=None, repr=False)

    def mask(self, size: tuple[int, int]) -> np.ndarray:
        """Returns: its HxW bool mask in an image of (width, height)."""
        x, y, w, h = self.bbox
        full = np.zeros((size[1], size[0]), dtype=bool)
        full[y : y + h, x : x + w] = self.crop
        return full

    def to_record(self) -> dict:
        return {"category": self.category, "area": self.area, "bbox": list(self.bbox), "score": self.score,
                "rle": self.rle}


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

    Each component is handled within its box, so the cost follows its area, not the image's.

    Arguments:
        category: the class's index.
        mask: HxW bool, the mask `clipseg batch` writes.
        soft: HxW float32, the map the mask came from (its mean over a region is the region's score).
        semantic: one region per class (all its components, holes kept).

    Returns:
        The regions in raster order of their first pixel; none when the mask is empty.
    """
    if semantic:
        if not mask.any():
            return []
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        box = (int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1))
        area = int(np.count_nonzero(mask))
        return [Instance(category, area, box, _score(soft, mask, area), encode_rle(mask),
                         mask[box[1] : box[1] + box[3], box[0] : box[0] + box[2]])]
    count, labels, boxes, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    found = []
    size = (mask.shape[1], mask.shape[0])
    for number in range(1, count):
        x, y, w, h, area = (int(value) for value in boxes[number])
        crop = labels[y : y + h, x : x + w] == number
        found.append(Instance(category, area, (x, y, w, h), _score(soft[y : y + h, x : x + w], crop, area),
                              _crop_rle(crop, x, y, size), crop))
    return found


def _score(soft: np.ndarray, region: np.ndarray, area: int) -> float:
    return round(float(soft.sum(where=region, dtype=np.float64)) / area, 6)


def _crop_rle(crop: np.ndarray, x: int, y: int, size: tuple[int, int]) -> str:
    """Returns: the compressed COCO RLE of a region given within its box at (x, y), in an image of ``size``:
    the runs come from the box's pixels (column by column, as COCO counts), pycocotools compresses them."""
    from pycocotools import mask as coco_mask

    width, height = size
    columns, rows = np.nonzero(crop.T)  # column-major: by column, then row
    index = (columns.astype(np.int64) + x) * height + rows + y
    breaks = np.flatnonzero(np.diff(index) != 1)
    starts = np.concatenate([index[:1], index[breaks + 1]])
    ends = np.concatenate([index[breaks], index[-1:]]) + 1
    counts = np.empty(2 * len(starts) + 1, dtype=np.int64)
    counts[0:-1:2] = starts - np.concatenate([[0], ends[:-1]])
    counts[1::2] = ends - starts
    counts[-1] = width * height - ends[-1]
    runs = counts.tolist() if counts[-1] else counts[:-1].tolist()  # pycocotools ends on the last run
    found = coco_mask.frPyObjects({"size": [height, width], "counts": runs}, height, width)
    return found["counts"].decode("ascii")


def winning_class(masks: Sequence[np.ndarray], softs: Sequence[np.ndarray]) -> np.ndarray:
    """One class per pixel: where several classes' masks hold a pixel, the one whose map is highest there
    (the first class on a tie).

    Returns:
        HxW int32: 0 for no class, else the class's index + 1.
    """
    stacked = np.stack([np.where(mask, soft, np.float32(-1.0)) for mask, soft in zip(masks, softs, strict=True)])
    best = stacked.argmax(axis=0).astype(np.int32) + 1
    return np.where(np.logical_or.reduce(list(masks)), best, 0).astype(np.int32)
