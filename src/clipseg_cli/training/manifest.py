"""Training and evaluation data: a manifest of (image, prompt, mask) records, read and checked.

The format is the one ``clipseg batch --json`` prints: JSON Lines with at least ``image``,
``prompt`` and ``mask``; relative paths are relative to the manifest's folder. A CSV file with a
header naming the columns ``image``, ``prompt`` and ``mask`` works too. A mask is an 8-bit or
1-bit image of the image's upright size; non-zero pixels are the object, an all-black mask says
the prompt is not in the image.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from clipseg_cli.constants import DEFAULT_MAX_PIXELS
from clipseg_cli.errors import ClipSegError, ImageError
from clipseg_cli.imaging.decode import open_image
from clipseg_cli.textlines import split_lines

COLUMNS = ("image", "prompt", "mask")
MASK_MODES = ("1", "L", "P", "RGB", "LA", "RGBA")  # 8-bit or 1-bit; alpha is ignored


@dataclass(frozen=True)
class Record:
    """One (image, prompt, mask) of a manifest; paths resolved against the manifest's folder."""

    image: Path
    prompt: str
    mask: Path
    where: str  # "manifest.jsonl line 3", for messages
    line: int = 0  # its line in the manifest

    def key(self) -> dict[str, str]:
        """The record as ``--per-record`` prints it."""
        return {"image": str(self.image), "prompt": self.prompt, "mask": str(self.mask)}


@dataclass(frozen=True)
class Manifest:
    """The usable records of a manifest and a one-line reason for each bad one."""

    path: Path
    records: list[Record]
    problems: list[str]
    sha256: str
    problem_lines: list[int] = field(default_factory=list)  # the line of each problem


def read_manifest(path: str | Path) -> Manifest:
    """Parse a JSON Lines or CSV manifest (format checks only; see `check_files`).

    Returns:
        The records, and one message per line that is not a usable record.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
        text = data.decode("utf-8-sig")
    except OSError as exc:
        raise ClipSegError(f"{path}: cannot read the manifest ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ClipSegError(f"{path}: the manifest is not UTF-8 text") from None
    rows = _csv_rows(path, text) if path.suffix.lower() == ".csv" else _jsonl_rows(path, text)
    records, problems, problem_lines, seen = [], [], [], {}
    for number, row in rows:
        where = f"{path} line {number}"
        record = f"{where}: {row}" if isinstance(row, str) else _record(path.parent, where, number, row)
        if isinstance(record, Record):
            first = seen.setdefault((record.image, record.prompt, record.mask), record.where)
            if first != record.where:  # counted once: a second copy would weigh the record twice
                record = f"{where}: a repeat of {first} (counted once)"
        if isinstance(record, Record):
            records.append(record)
        else:
            problems.append(record)
            problem_lines.append(number)
    return Manifest(path, records, problems, hashlib.sha256(data).hexdigest(), problem_lines)


def _jsonl_rows(path: Path, text: str) -> Iterator[tuple[int, dict | str]]:
    for number, line in enumerate(split_lines(text), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, f"not valid JSON ({exc.msg})"
            continue
        yield number, row if isinstance(row, dict) else "not a JSON object"


def _csv_rows(path: Path, text: str) -> Iterator[tuple[int, dict | str]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))  # lines end at \n, \r\n, \r (quoted ones kept)
    missing = [column for column in COLUMNS if column not in (reader.fieldnames or [])]
    if missing:
        raise ClipSegError(f"{path}: the CSV header must name the columns {', '.join(COLUMNS)} "
                           f"(missing: {', '.join(missing)})")
    for row in reader:
        yield reader.line_num, row


def _record(folder: Path, where: str, line: int, row: dict) -> Record | str:
    """A Record, or the one-line reason why the row is not one."""
    if row.get("status") == "failed":  # a line of `batch --json` for an image that failed
        return f"{where}: batch failed on this image ({row.get('error') or 'no mask'})"
    for key in COLUMNS:
        value = row.get(key)
        if not isinstance(value, str) or not value:
            return f"{where}: {key!r} is missing or not a non-empty string"
        if "\0" in value:
            return f"{where}: {key!r} holds a NUL byte"
        try:
            os.fsencode(value) if key != "prompt" else value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (a JSON escape such as \ud800)
            return f"{where}: {key!r} is not valid Unicode text (it holds a lone surrogate)"
    return Record(folder / row["image"], row["prompt"], folder / row["mask"], where, line)


def read_mask(path: Path, size: tuple[int, int] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A mask file as booleans: non-zero pixels (in any colour channel) are the object.

    Its header is checked before its pixels are decoded: at most ``max_pixels`` pixels and, when
    given, the (width, height) ``size`` of its upright image.

    Returns:
        HxW bool array; raises ImageError naming the file.
    """
    try:
        with Image.open(path) as img:
            if img.mode not in MASK_MODES:
                raise ImageError(path, f"mask must be an 8-bit or 1-bit image, got mode {img.mode}")
            width, height = img.size
            if width * height > max_pixels:
                raise ImageError(path, f"mask is {width}x{height}, more than --max-pixels {max_pixels} pixels")
            if size is not None and img.size != tuple(size):
                raise ImageError(path, f"mask is {width}x{height}, the image is {size[0]}x{size[1]} (upright); "
                                       "masks must have the image's size")
            img.load()
            if img.mode == "P":
                img = img.convert("RGB")
            array = np.asarray(img)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(path, "no such file") from None
    except Exception as exc:  # Pillow raises many types for damaged files
        raise ImageError(path, f"cannot read the mask ({' '.join(str(exc).split()) or type(exc).__name__})") from None
    if array.ndim == 3:
        colours = array[..., :3] if array.shape[2] >= 3 else array[..., :1]
        return colours.any(axis=2)
    return array != 0


def check_record(record: Record, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """Decode a record's image, then check its mask's header against it and decode the mask.

    Returns:
        None when usable, else one line naming the file and the reason.
    """
    try:
        size = open_image(record.image, max_pixels=max_pixels).size
        read_mask(record.mask, size, max_pixels)
    except ImageError as exc:
        return f"{record.where}: {exc}"
    return None


def check_files(records: Sequence[Record], max_pixels: int = DEFAULT_MAX_PIXELS, workers: int = 2
                ) -> tuple[list[Record], list[str]]:
    """Split records into usable ones and one-line problems, decoding every file (in threads).

    Returns:
        (good records in manifest order, problems in manifest order).
    """
    with ThreadPoolExecutor(workers) as pool:
        found = list(pool.map(lambda r: check_record(r, max_pixels), records))
    good = [record for record, problem in zip(records, found, strict=True) if problem is None]
    return good, [problem for problem in found if problem is not None]
