"""Turning command-line inputs (files, folders, '-' for stdin) into work items."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from clipseg_cli.constants import OUTPUT_SUFFIXES, TEMP_SUFFIX

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)


@dataclass(frozen=True)
class WorkItem:
    """One input image and where its outputs go.

    source: the image file. output_dir: the folder for its outputs. stem: the outputs' name prefix.
    """

    source: Path
    output_dir: Path
    stem: str


def is_own_output(path: Path) -> bool:
    """Whether a file is one we wrote (or are writing): never an input."""
    name = path.name.lower()
    return name.endswith(OUTPUT_SUFFIXES) or name.endswith(TEMP_SUFFIX)


def walk(folder: Path, recursive: bool, skip: Path | None) -> Iterator[Path]:
    """Image files in a folder, sorted, hidden files left out (`collect` leaves our outputs out).

    Returns:
        Paths of candidate images; ``skip`` (the output folder) is not entered.
    """
    for root, dirs, files in os.walk(folder):
        root_path = Path(root)
        dirs[:] = sorted(d for d in dirs if recursive and not d.startswith(".")
                         and (skip is None or not _same(root_path / d, skip)))
        for name in sorted(files):
            path = root_path / name
            if not name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS:
                yield path


def collect(
    inputs: Iterable[str], *, output_dir: Path | None, recursive: bool = False, stdin: Iterable[str] = ()
) -> Iterator[WorkItem]:
    """Work items for files, folders and '-' (one path per line from ``stdin``).

    Outputs mirror the input tree under ``output_dir``; without it they go beside each image.
    A missing path still yields an item, so that its failure is reported with the others; our
    own outputs (``*.mask.png``, ...) are left out even when named, e.g. by a shell glob.

    Returns:
        Items in a stable order.
    """
    pairs: list[tuple[Path, Path | None]] = []  # (file, root of its folder argument or None)
    for arg in inputs:
        if arg == "-":
            pairs += [(Path(line.rstrip("\r\n")), None) for line in stdin if line.strip()]
        elif Path(arg).is_dir():
            pairs += [(path, Path(arg)) for path in walk(Path(arg), recursive, output_dir)]
        else:
            pairs.append((Path(arg), None))
    return _items([(path, root) for path, root in pairs if not is_own_output(path)], output_dir)


def _items(pairs: list[tuple[Path, Path | None]], output_dir: Path | None) -> Iterator[WorkItem]:
    """Items for (file, its root) pairs, with output stems unique per output folder.

    A stem shared by several inputs that land in one folder (photo.jpg, photo.png) becomes the
    full name (photo_jpg, photo_png); a name still taken gets -2, -3, ... in input order.
    """
    placed = [(path, _target(path, root, output_dir)) for path, root in pairs]
    counts: dict[tuple[Path, str], int] = {}
    for path, target in placed:
        counts[(target, path.stem)] = counts.get((target, path.stem), 0) + 1
    taken: set[tuple[Path, str]] = set()
    for path, target in placed:
        base = stem = path.stem if counts[(target, path.stem)] == 1 else path.name.replace(".", "_")
        number = 1
        while (target, stem) in taken:
            number += 1
            stem = f"{base}-{number}"
        taken.add((target, stem))
        yield WorkItem(path, target, stem)


def _target(path: Path, root: Path | None, output_dir: Path | None) -> Path:
    """Beside the image; or under output_dir, mirroring the folder argument's tree."""
    if output_dir is None:
        return path.parent
    return output_dir if root is None else output_dir / path.parent.relative_to(root)


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False
