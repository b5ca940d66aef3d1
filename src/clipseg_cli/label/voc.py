"""Pascal VOC: ``JPEGImages/NAME``, ``Annotations/STEM.xml`` (one object per instance, 1-based inclusive
boxes), ``SegmentationClass/STEM.png`` and ``SegmentationObject/STEM.png`` (palette PNGs: one class per
pixel, the most probable where classes overlap; objects numbered as in the XML), ``ImageSets/Segmentation/
{split}.txt`` and ``ImageSets/Main/{split}.txt``, and ``labelmap.txt`` (names and colours, as CVAT writes it)."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image

from clipseg_cli.errors import ClipSegError
from clipseg_cli.label.classes import LabelClass
from clipseg_cli.label.instances import winning_class
from clipseg_cli.label.store import Entry, LabelledImage, write_file

NAME = "voc"
MAX_OBJECTS = 254  # object indices 1..254; 255 is VOC's "void"


def image_path(entry: Entry) -> str:
    return f"JPEGImages/{entry.name}"


def voc_palette() -> list[int]:
    """Returns: VOC's colour map (index -> RGB, 256 entries, flattened), as its devkit makes it."""
    palette = []
    for index in range(256):
        red = green = blue = 0
        value = index
        for shift in range(7, -1, -1):
            red |= ((value >> 0) & 1) << shift
            green |= ((value >> 1) & 1) << shift
            blue |= ((value >> 2) & 1) << shift
            value >>= 3
        palette += [red, green, blue]
    return palette


_PALETTE = voc_palette()


def palette_png(indices: np.ndarray) -> bytes:
    """Returns: the PNG bytes of an HxW index image (mode P with VOC's colour map)."""
    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    image.putpalette(_PALETTE)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def write_image(root: Path, image: LabelledImage, classes: Sequence[LabelClass]) -> tuple[list[str], dict]:
    """Write the image's XML and its class and object PNGs."""
    if len(image.instances) > MAX_OBJECTS:
        raise ClipSegError(f"{image.entry.key}: {len(image.instances)} regions; VOC's object PNG holds "
                           f"{MAX_OBJECTS}: raise --min-area, or use --semantic or another --format")
    winner = winning_class(image.masks, image.softs)
    objects = np.zeros(winner.shape, dtype=np.uint8)
    for number, instance in enumerate(image.instances, 1):
        x, y, w, h = instance.bbox
        box = objects[y : y + h, x : x + w]
        box[instance.crop & (winner[y : y + h, x : x + w] == instance.category + 1)] = number
    stem = image.entry.stem
    return [write_file(root, f"Annotations/{stem}.xml", annotation_xml(image, classes).encode()),
            write_file(root, f"SegmentationClass/{stem}.png", palette_png(winner)),
            write_file(root, f"SegmentationObject/{stem}.png", palette_png(objects))], {}


def annotation_xml(image: LabelledImage, classes: Sequence[LabelClass]) -> str:
    """Returns: the VOC annotation of one image: size, and per instance its class and box (1-based, inclusive)."""
    width, height = image.size
    lines = ["<annotation>", "  <folder>JPEGImages</folder>", f"  <filename>{escape(image.entry.name)}</filename>",
             f"  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>",
             "  <segmented>1</segmented>"]
    for instance in image.instances:
        x, y, w, h = instance.bbox
        lines += ["  <object>", f"    <name>{escape(classes[instance.category].name)}</name>",
                  "    <pose>Unspecified</pose>", "    <truncated>0</truncated>", "    <difficult>0</difficult>",
                  f"    <score>{instance.score}</score>",
                  f"    <bndbox><xmin>{x + 1}</xmin><ymin>{y + 1}</ymin><xmax>{x + w}</xmax><ymax>{y + h}</ymax>"
                  "</bndbox>", "  </object>"]
    return "\n".join([*lines, "</annotation>"]) + "\n"


def finish(root: Path, classes: Sequence[LabelClass], splits: dict[str, list[Entry]],
           record: Callable[[Entry], dict]) -> list[str]:
    """Write the image sets of each split and the label map.

    Returns:
        The files written, relative to the dataset.
    """
    written = []
    for split, entries in splits.items():
        listing = "".join(entry.stem + "\n" for entry in entries).encode()
        written += [write_file(root, f"ImageSets/Segmentation/{split}.txt", listing),
                    write_file(root, f"ImageSets/Main/{split}.txt", listing)]
    colours = [_PALETTE[3 * i : 3 * i + 3] for i in range(len(classes) + 1)]
    lines = ["# label:color_rgb:parts:actions", f"background:{','.join(map(str, colours[0]))}::"]
    lines += [f"{c.name}:{','.join(map(str, colours[i + 1]))}::" for i, c in enumerate(classes)]
    written.append(write_file(root, "labelmap.txt", "".join(line + "\n" for line in lines).encode()))
    return written
