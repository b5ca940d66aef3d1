"""The dataset's copy of each image: its bytes, or a link (``--link``); an image that EXIF rotates is stored
upright instead, so that the labels match what every loader sees."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from PIL import ExifTags, Image, ImageOps

from clipseg_cli.label.store import write_file

UPRIGHT_JPEG_QUALITY = 95  # a rotated JPEG is encoded again (Pillow has no lossless transposition)


def needs_turning(source: Path) -> bool:
    """Whether the image's EXIF orientation rotates or flips it (its stored pixels are not upright)."""
    try:
        with Image.open(source) as image:
            value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # a file Pillow cannot read has been refused by the decode already
        return False
    return isinstance(value, int) and 2 <= value <= 8


def store_image(root: Path, relative: str, source: Path, *, link: bool) -> str:
    """Put the image at ``root/relative``: a copy of its bytes, a symbolic link to it (``link``), or, when its
    EXIF orientation turns it, its upright pixels (same format, the orientation tag dropped).

    Returns:
        ``relative``.
    """
    if needs_turning(source):
        with Image.open(source) as image:
            upright = ImageOps.exif_transpose(image)
            kind = image.format or "PNG"
        extra = {"quality": UPRIGHT_JPEG_QUALITY} if kind in ("JPEG", "MPO") else {}
        return write_file(root, relative, lambda stream: upright.save(stream, format="JPEG" if kind == "MPO" else kind,
                                                                        **extra))
    if link:
        return link_file(root, relative, os.path.abspath(source))
    return copy_file(root, relative, source)


def link_file(root: Path, relative: str, target: str) -> str:
    """A symbolic link at ``root/relative`` to ``target``, put in place whole (a temporary link, then a rename).

    Returns:
        ``relative``.
    """
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.clipseg-tmp")
    if os.path.lexists(temp):
        temp.unlink()
    os.symlink(target, temp)
    os.replace(temp, path)
    return relative


def copy_file(root: Path, relative: str, source: Path) -> str:
    """A copy of ``source``'s bytes at ``root/relative``, written whole (`write_file`).

    Returns:
        ``relative``.
    """
    def copy(stream) -> None:
        with open(source, "rb") as original:
            shutil.copyfileobj(original, stream, 1 << 20)

    return write_file(root, relative, copy)
