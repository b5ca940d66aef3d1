"""``--preview N``: a contact sheet of the first N labelled images, each region tinted in its class's colour
(the palette of the command line's overlays), with a legend of the classes."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

from PIL import Image, ImageDraw, ImageFont, ImageOps

from clipseg_cli.imaging.writing import overlay, palette_color
from clipseg_cli.label.classes import LabelClass
from clipseg_cli.label.instances import decode_rle
from clipseg_cli.label.store import Entry, write_file

TILE = 256
COLUMNS = 4
PREVIEW_FILE = "preview.png"


def write_preview(root: Path, classes: Sequence[LabelClass], fmt: ModuleType, entries: Sequence[Entry],
                  record: Callable[[Entry], dict]) -> str:
    """Write ``preview.png``: one tile per entry (its regions tinted by class), a legend band on top.

    Returns:
        The file written, relative to the dataset.
    """
    font = _font(14)
    legend = 24
    rows = max(1, -(-len(entries) // COLUMNS))
    sheet = Image.new("RGB", (COLUMNS * TILE, legend + rows * TILE), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    x = 6
    for index, label_class in enumerate(classes):
        draw.rectangle((x, 5, x + 14, 19), fill=palette_color(index), outline=(0, 0, 0))
        draw.text((x + 20, 4), label_class.name, fill=(0, 0, 0), font=font)
        x += 34 + int(draw.textlength(label_class.name, font=font))
    for number, entry in enumerate(entries):
        tile = _tile(root / fmt.image_path(entry), record(entry))
        sheet.paste(tile, ((number % COLUMNS) * TILE + (TILE - tile.width) // 2,
                           legend + (number // COLUMNS) * TILE + (TILE - tile.height) // 2))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return write_file(root, PREVIEW_FILE, buffer.getvalue())


def _tile(path: Path, found: dict) -> Image.Image:
    """Returns: the image with its regions tinted, fitted into TILE x TILE."""
    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    size = (found["width"], found["height"])
    if image.size != size:
        image = image.resize(size)
    for instance in found["instances"]:
        image = overlay(image, decode_rle(instance["rle"], size), palette_color(instance["category"]), 0.5)
    scale = min((TILE - 4) / image.width, (TILE - 4) / image.height)
    fitted = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(fitted, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS)


def _font(size: int):
    try:
        return ImageFont.load_default(size)
    except TypeError:
        return ImageFont.load_default()

