"""Label Studio: ``tasks.json`` (one task per image, its prediction a brush region per instance, with the
region's score: importable as pre-annotations), ``config.xml`` (a labelling config with the classes as brush
labels) and the images in ``images/{split}/``. Serve the dataset folder as Label Studio's local files
(LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=DATASET): each task's image is ``/data/local-files/?d=images/...``.

Brush masks are Label Studio's RLE, the bytes its converter (``label_studio_converter.brush.mask2rle``)
writes for the region as an RGBA image of 255s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO
from xml.sax.saxutils import quoteattr

import numpy as np

from clipseg_cli.label.classes import LabelClass
from clipseg_cli.label.store import Entry, LabelledImage, json_text, write_file

NAME = "labelstudio"
FROM_NAME, TO_NAME = "label", "image"
MODEL_VERSION = "clipseg"


def image_path(entry: Entry) -> str:
    return f"images/{entry.split}/{entry.name}"


def brush_rle(mask: np.ndarray) -> list[int]:
    """Label Studio's brush RLE of an HxW bool mask: the mask as 8-bit RGBA (255 inside), run-length encoded
    as its converter's `encode_rle` does (word size 8, run-length sizes 3, 4, 8 and 16 bits), byte for byte.

    Returns:
        The RLE bytes as a list of ints.
    """
    flat = np.repeat(mask.ravel().astype(np.uint8) * np.uint8(255), 4)
    count = len(flat)
    bits = [f"{count:032b}", f"{7:05b}", "".join(f"{size - 1:04b}" for size in (3, 4, 8, 16))]
    if count:
        ends = np.append(np.flatnonzero(flat[1:] != flat[:-1]), count - 1)
        lengths = np.diff(np.append(-1, ends))
        for length, value in zip(lengths.tolist(), flat[ends].tolist(), strict=True):
            bits.append(_run(length, value))
    text = "".join(bits)
    text += "0" * (8 - len(text) % 8)  # the converter always pads, a whole zero byte when already aligned
    return list(np.packbits(np.frombuffer(text.encode(), dtype=np.uint8) - ord("0")).tolist())


def _run(length: int, value: int) -> str:
    word = f"{value:08b}"
    if length == 1:
        return "000000" + word
    if length <= 8:
        return f"100{length - 1:03b}" + word
    if length <= 16:
        return f"101{length - 1:04b}" + word
    if length <= 256:
        return f"110{length - 1:08b}" + word
    parts = []
    while length > 2**16:  # as the converter splits a long run
        parts.append(f"111{2**16 - 1:016b}" + word)
        length -= 2**16
    return "".join(parts) + f"111{length - 1:016b}" + word


def write_image(root: Path, image: LabelledImage, classes: Sequence[LabelClass]) -> tuple[list[str], dict]:
    """No file of its own: the prediction's regions go into the record, for ``tasks.json``."""
    width, height = image.size
    regions = [{"id": f"r{number}", "type": "brushlabels", "from_name": FROM_NAME, "to_name": TO_NAME,
                "original_width": width, "original_height": height, "image_rotation": 0,
                "value": {"format": "rle", "rle": brush_rle(instance.mask(image.size)),
                          "brushlabels": [classes[instance.category].name]},
                "score": instance.score}
               for number, instance in enumerate(image.instances, 1)]
    return [], {"labelstudio": regions}


def finish(root: Path, classes: Sequence[LabelClass], splits: dict[str, list[Entry]],
           record: Callable[[Entry], dict]) -> list[str]:
    """Write ``tasks.json`` (streamed, splits in order) and ``config.xml``.

    Returns:
        The files written, relative to the dataset.
    """
    def write(stream: BinaryIO) -> None:
        stream.write(b"[")
        first = True
        for split, entries in splits.items():
            for entry in entries:
                found = record(entry)
                regions = found["labelstudio"]
                score = round(sum(r["score"] for r in regions) / len(regions), 6) if regions else 0.0
                task = {"data": {"image": f"/data/local-files/?d={image_path(entry)}", "split": split},
                        "predictions": [{"model_version": MODEL_VERSION, "score": score, "result": regions}]}
                stream.write((("\n" if first else ",\n") + json_text(task)).encode())
                first = False
        stream.write(b"\n]\n")

    labels = "".join(f"    <Label value={quoteattr(c.name)}/>\n" for c in classes)
    config = (f'<View>\n  <Image name="{TO_NAME}" value="$image" zoom="true"/>\n'
              f'  <BrushLabels name="{FROM_NAME}" toName="{TO_NAME}">\n{labels}  </BrushLabels>\n</View>\n')
    return [write_file(root, "tasks.json", write), write_file(root, "config.xml", config.encode())]
