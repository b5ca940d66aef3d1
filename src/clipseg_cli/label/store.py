"""The dataset folder's own records: what made it (its marker), one record per labelled image, and the
manifests of shards. Every file is written whole (a temporary file, then a rename), so a killed run
leaves complete files only and a rerun picks up where it stopped.

    DATASET/.clipseg-label/dataset.json             format and classes: another run must match them
    DATASET/.clipseg-label/records/ab/<sha>.json    one per image, written after its files
    DATASET/.clipseg-label/shards/shard-K-of-N.json what one shard labelled
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from clipseg_cli.errors import ClipSegError
from clipseg_cli.imaging.writing import atomic_write
from clipseg_cli.label.instances import Instance

STORE = ".clipseg-label"
MARKER = "dataset.json"
RECORDS = "records"
SHARDS = "shards"
MARKER_VERSION = 1


@dataclass(frozen=True)
class Entry:
    """One image of the dataset, as the final files list it.

    key: its path relative to its input root (its shard comes from it).
    name: its file name in the dataset (unique; its record is found by it).
    split: train, val or test.
    """

    key: str
    name: str
    split: str

    @property
    def stem(self) -> str:
        return self.name.rsplit(".", 1)[0] if "." in self.name else self.name


@dataclass
class LabelledImage:
    """One image's labels while its files are written.

    size: (width, height) of the upright image.
    masks, softs: per class, HxW bool mask and HxW float32 map.
    """

    entry: Entry
    size: tuple[int, int]
    instances: list[Instance]
    masks: list[np.ndarray] = field(repr=False)
    softs: list[np.ndarray] = field(repr=False)


def json_text(value: object) -> str:
    """Returns: the one form of JSON every file of a dataset uses (UTF-8, no spaces, keys in given order)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def write_file(root: Path, relative: str, data: bytes | Callable[[BinaryIO], None]) -> str:
    """Write ``root/relative`` whole (through a temporary file); ``data`` is the bytes or a function that streams them.

    Returns:
        ``relative``.
    """
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data if callable(data) else lambda stream: stream.write(data))
    return relative


def record_path(root: Path, name: str) -> Path:
    """Returns: where the record of the image with this file name in the dataset is kept (names are unique)."""
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return root / STORE / RECORDS / digest[:2] / f"{digest}.json"


def read_record(root: Path, name: str) -> dict | None:
    """Returns: the image's record, or None where there is none (or it cannot be read)."""
    try:
        found = json.loads(record_path(root, name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def write_record(root: Path, name: str, record: dict) -> None:
    """Write an image's record, after its files: a record names complete files only."""
    path = record_path(root, name)
    write_file(root, path.relative_to(root).as_posix(), (json_text(record) + "\n").encode())


def open_dataset(root: Path, fmt: str, class_names: Sequence[str], semantic: bool) -> None:
    """Make ``root`` this run's dataset folder, or check that it is one: the same format and classes.

    Raises:
        ClipSegError: the folder holds another dataset (other format, classes or regions), or files that
            are not a dataset of ours.
    """
    marker = {"clipseg-label": MARKER_VERSION, "format": fmt, "classes": list(class_names), "semantic": semantic}
    path = root / STORE / MARKER
    if path.is_file():
        found = _read_marker(path)
        if found != marker:
            raise ClipSegError(
                f"-o {root} holds another dataset ({found.get('format')} of classes {found.get('classes')}"
                f"{', semantic' if found.get('semantic') else ''}); label into another folder, or give the same "
                f"--format, classes and --semantic to relabel it")
        return
    if root.exists():
        if not root.is_dir():
            raise ClipSegError(f"-o {root} is a file; give a folder for the dataset")
        if any(not entry.name.startswith(".") for entry in os.scandir(root)):
            raise ClipSegError(f"-o {root} holds files that are not a clipseg dataset; give a new or empty folder")
    write_file(root, f"{STORE}/{MARKER}", (json_text(marker) + "\n").encode())


def _read_marker(path: Path) -> dict:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ClipSegError(f"{path}: unreadable ({exc}); remove it to start the dataset afresh") from None
    return found if isinstance(found, dict) else {}


def read_marker(root: Path) -> dict:
    """Returns: the dataset's marker (format, classes, semantic).

    Raises:
        ClipSegError: the folder is not a dataset of ours.
    """
    path = root / STORE / MARKER
    if not path.is_file():
        raise ClipSegError(f"{root} is not a clipseg dataset (no {STORE}/{MARKER})")
    return _read_marker(path)


def prune(root: Path, keep: Sequence[str]) -> int:
    """Remove the records of images that are no longer in the dataset, and the files they list that no kept
    image lists (an image removed from the inputs leaves no unlisted image behind: YOLO would train on it as
    background).

    Arguments:
        keep: the file names of the dataset's images.

    Returns:
        How many records were removed.
    """
    folder = root / STORE / RECORDS
    if not folder.is_dir():
        return 0
    kept = {record_path(root, name) for name in keep}
    stale = [path for path in sorted(folder.glob("*/*.json")) if path not in kept]
    if not stale:
        return 0
    listed = {relative for path in kept for relative in _listed_files(path)}
    for path in stale:
        for relative in _listed_files(path):
            target = root / relative
            if relative not in listed and ".." not in Path(relative).parts and os.path.lexists(target):
                target.unlink()
        path.unlink()
    return len(stale)


def _listed_files(path: Path) -> list[str]:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    files = found.get("files", []) if isinstance(found, dict) else []
    return [relative for relative in files if isinstance(relative, str)]
