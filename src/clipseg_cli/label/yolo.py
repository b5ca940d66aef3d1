"""YOLO, ultralytics' segmentation layout: ``images/{split}/NAME``, ``labels/{split}/STEM.txt`` (one line per
instance: the class and its polygon, normalised) and ``data.yaml`` (the splits' folders and the names).

An instance with holes, or a ``--semantic`` region of several parts, is one polygon: its outline and every
hole and part, joined by zero-width bridges (ultralytics' own COCO converter joins parts the same way), so
no part is dropped. Vertices sit a quarter pixel inside each pixel's corner, so that rounding (supervision)
and truncating (ultralytics) both give back the pixel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from clipseg_cli.label.classes import LabelClass
from clipseg_cli.label.store import Entry, LabelledImage, write_file

NAME = "yolo"
_QUARTER = 0.25


def image_path(entry: Entry) -> str:
    return f"images/{entry.split}/{entry.name}"


def write_image(root: Path, image: LabelledImage, classes: Sequence[LabelClass]) -> tuple[list[str], dict]:
    """Write the image's label file (empty when nothing was found: a background image)."""
    width, height = image.size
    lines = []
    for instance in image.instances:
        corner = np.array(instance.bbox[:2], dtype=np.float64) + _QUARTER
        points = (polygon(instance.crop) + corner) / np.array([width, height], dtype=np.float64)
        lines.append(" ".join([str(instance.category), *(f"{value:.6f}" for value in points.ravel())]))
    text = "".join(line + "\n" for line in lines)
    return [write_file(root, f"labels/{image.entry.split}/{image.entry.stem}.txt", text.encode())], {}


def polygon(mask: np.ndarray) -> np.ndarray:
    """One polygon for a region: its outer outlines and its holes joined by zero-width bridges.

    Returns:
        Nx2 float64 pixel coordinates (x, y) of pixel corners, N >= 3.
    """
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    parts = [contour.reshape(-1, 2).astype(np.int64) for contour in contours]
    path = parts[0]
    for part in parts[1:]:
        i, j = _closest(path, part)
        path = np.concatenate([path[: i + 1], part[j:], part[: j + 1], path[i:]])
    while len(path) < 3:  # a one- or two-pixel region: a degenerate triangle still covers its pixels
        path = np.concatenate([path, path[-1:]])
    return path.astype(np.float64)


def _closest(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """Returns: the indices of the closest pair of points of a and b (squared distances, in blocks)."""
    best, found = None, (0, 0)
    step = max(1, (1 << 22) // max(1, len(b)))
    for start in range(0, len(a), step):
        distances = ((a[start : start + step, None, :] - b[None, :, :]) ** 2).sum(axis=-1)
        index = int(distances.argmin())
        value = distances.flat[index]
        if best is None or value < best:
            best, found = value, (start + index // len(b), index % len(b))
    return found


def finish(root: Path, classes: Sequence[LabelClass], splits: dict[str, list[Entry]],
           record: Callable[[Entry], dict]) -> list[str]:
    """Write ``data.yaml``: no ``path`` key (ultralytics then reads the folders beside the file), the splits'
    image folders (val is train's when there is no val split) and the class names.

    Returns:
        The files written, relative to the dataset.
    """
    import json

    for split in splits:
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    lines = [f"{split}: images/{split}" for split in splits]
    if "val" not in splits:
        lines.append("val: images/train")
    lines += [f"nc: {len(classes)}", "names:"]
    lines += [f"  {index}: {json.dumps(c.name, ensure_ascii=False)}" for index, c in enumerate(classes)]
    return [write_file(root, "data.yaml", "".join(line + "\n" for line in lines).encode())]
