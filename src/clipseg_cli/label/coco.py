"""COCO: ``annotations/instances_{split}.json`` (images, categories, and one annotation per instance with its
mask as compressed RLE from pycocotools, ``area`` its pixel count, ``bbox`` from the mask, ``score``), the
images in ``images/{split}/``. The JSON is streamed image by image, never built in memory."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from clipseg_cli.label.classes import LabelClass
from clipseg_cli.label.store import Entry, LabelledImage, json_text, write_file

NAME = "coco"


def image_path(entry: Entry) -> str:
    return f"images/{entry.split}/{entry.name}"


def write_image(root: Path, image: LabelledImage, classes: Sequence[LabelClass]) -> tuple[list[str], dict]:
    """Nothing but the image has a file of its own: the annotations go into the split's JSON."""
    return [], {}


def finish(root: Path, classes: Sequence[LabelClass], splits: dict[str, list[Entry]],
           record: Callable[[Entry], dict]) -> list[str]:
    """Write each split's ``instances_{split}.json``, reading the images' records one at a time.

    Returns:
        The files written, relative to the dataset.
    """
    return [write_file(root, f"annotations/instances_{split}.json", _streamer(classes, entries, record))
            for split, entries in splits.items()]


def _streamer(classes: Sequence[LabelClass], entries: list[Entry],
              record: Callable[[Entry], dict]) -> Callable[[BinaryIO], None]:
    def write(stream: BinaryIO) -> None:
        info = {"description": "made by clipseg label"}
        categories = [{"id": i + 1, "name": c.name, "supercategory": "object"} for i, c in enumerate(classes)]
        stream.write(f'{{"info":{json_text(info)},"licenses":[],"categories":{json_text(categories)},'
                     '"images":['.encode())
        for number, entry in enumerate(entries, 1):
            found = record(entry)
            image = {"id": number, "file_name": entry.name, "width": found["width"], "height": found["height"]}
            stream.write(((",\n" if number > 1 else "\n") + json_text(image)).encode())
        stream.write(b'\n],"annotations":[')
        count = 0
        for number, entry in enumerate(entries, 1):
            found = record(entry)
            for instance in found["instances"]:
                count += 1
                annotation = {"id": count, "image_id": number, "category_id": instance["category"] + 1,
                              "segmentation": {"size": [found["height"], found["width"]], "counts": instance["rle"]},
                              "area": instance["area"], "bbox": instance["bbox"], "iscrowd": 0,
                              "score": instance["score"]}
                stream.write(((",\n" if count > 1 else "\n") + json_text(annotation)).encode())
        stream.write(b"\n]}\n")
    return write
