"""Turning command-line inputs (files, folders, '-' for stdin) into work items."""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath

from clipseg_cli.constants import OUTPUT_SUFFIXES, TEMP_SUFFIX
from clipseg_cli.errors import ClipSegError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)


@dataclass(frozen=True)
class WorkItem:
    """One input image and where its outputs go.

    source: the image file.
    output_dir: the folder for its outputs.
    stem: the outputs' name prefix.
    """

    source: Path
    output_dir: Path
    stem: str


def is_own_output(path: Path) -> bool:
    """Whether a file is one we wrote (or are writing): never an input."""
    name = path.name.lower()
    return name.endswith(OUTPUT_SUFFIXES) or name.endswith(TEMP_SUFFIX)


def file_id(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(device, inode) of the file a path leads to (through links), or None where there is none."""
    try:
        status = os.stat(path)
    except (OSError, ValueError):
        return None
    return status.st_dev, status.st_ino


class FileSet:
    """Files known by their resolved path and, for those that exist, by `file_id` (device, inode).

    ``path in files`` holds for another name of one of them: through a symlinked folder, a link or
    a hard link.
    """

    def __init__(self, paths: Iterable[str | os.PathLike[str]]) -> None:
        paths = list(paths)
        self.resolved = {os.path.realpath(path) for path in paths}
        self.ids = {found for found in map(file_id, paths) if found is not None}

    def __contains__(self, path: str | os.PathLike[str]) -> bool:
        return os.path.realpath(path) in self.resolved or file_id(path) in self.ids


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
) -> list[WorkItem]:
    """Work items for files, folders and '-' (one path per line from ``stdin``; blank lines skipped).

    Outputs mirror the input tree under ``output_dir``; without it they go beside each image.
    Each file is taken once, at its first mention (also through a link). A missing path still
    yields an item, so that its failure is reported with the others, but takes no output name
    from a file that exists. Our own outputs (``*.mask.png``, ...) are left out even when named,
    e.g. by a shell glob.

    Returns:
        Items in input order.

    Raises:
        ClipSegError: an input is the empty string.
    """
    pairs: list[tuple[Path, Path | None]] = []  # (file, root of its folder argument or None)
    for arg in inputs:
        if arg == "":
            raise ClipSegError('an input is an empty path (""); give an image file or a folder')
        if arg == "-":
            pairs += [(Path(line.rstrip("\r\n")), None) for line in stdin if line.strip()]
        elif Path(arg).is_dir():
            pairs += [(path, Path(arg)) for path in walk(Path(arg), recursive, output_dir)]
        else:
            pairs.append((Path(arg), None))
    return _items(_first_mentions([(path, root) for path, root in pairs if not is_own_output(path)]), output_dir)


def no_images(inputs: list[str], recursive: bool) -> str:
    """The error for inputs that hold no image to process; it suggests -r where a folder has subfolders.

    Returns:
        One line, for a ClipSegError.
    """
    outputs = ", ".join(f"*{suffix}" for suffix in OUTPUT_SUFFIXES)
    nested = not recursive and any(Path(arg).is_dir() and any(p.is_dir() for p in Path(arg).iterdir())
                                   for arg in inputs)
    hint = "; add -r to walk subfolders" if nested else ""
    named = " ".join(inputs[:3]) + (f" (and {len(inputs) - 3} more)" if len(inputs) > 3 else "")
    return f"no images to process in {named}: no image files other than our own outputs ({outputs}){hint}"


def _first_mentions(
    pairs: list[tuple[Path, Path | None]],
) -> list[tuple[Path, Path | None, bool]]:
    """Each file once, at its first mention: by `file_id` where it exists, else by absolute path.

    Returns:
        (file, root, whether it exists) per distinct file, in input order.
    """
    seen: set[object] = set()
    kept = []
    for path, root in pairs:
        found = file_id(path)
        key = found if found is not None else os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            kept.append((path, root, found is not None))
    return kept


def _items(entries: list[tuple[Path, Path | None, bool]], output_dir: Path | None) -> list[WorkItem]:
    """Items for (file, its root, exists) entries, with output stems unique per output folder.

    Files that exist are named first, so that a missing path never renames a good file's outputs.
    """
    placed = [(path, _target(path, root, output_dir)) for path, root, _ in entries]
    taken: set[tuple[Path, str]] = set()
    stems: dict[int, str] = {}
    for wanted in (True, False):
        indices = [i for i, (*_, found) in enumerate(entries) if found is wanted]
        stems.update(zip(indices, _stems([placed[i] for i in indices], taken), strict=True))
    return [WorkItem(path, target, stems[i]) for i, (path, target) in enumerate(placed)]


def output_stems(placed: list[tuple[PurePath, PurePath]]) -> list[str]:
    """Output stems for (file, output folder) pairs, as `collect` names them (see `_stems`).

    Returns:
        One stem per pair.
    """
    return _stems(placed, set())


def _stems(placed: list[tuple[PurePath, PurePath]], taken: set[tuple[PurePath, str]]) -> list[str]:
    """Output stems for (file, output folder) pairs, none in ``taken`` (which they are added to).

    A stem shared by several files that land in one folder (photo.jpg, photo.png) becomes the
    full name (photo_jpg, photo_png); a name still taken gets -2, -3, ... in input order. Linear:
    the search for a free number resumes where the last one for that name stopped.

    Returns:
        One stem per pair.
    """
    counts = Counter((target, path.stem) for path, target in placed)
    numbers: dict[tuple[Path, str], int] = {}  # the last number tried per (folder, base name)
    stems = []
    for path, target in placed:
        base = path.stem if counts[(target, path.stem)] == 1 else path.name.replace(".", "_")
        number = numbers.get((target, base), 1)
        stem = base if number == 1 else f"{base}-{number}"
        while (target, stem) in taken:
            number += 1
            stem = f"{base}-{number}"
        numbers[(target, base)] = number
        taken.add((target, stem))
        stems.append(stem)
    return stems


def _target(path: Path, root: Path | None, output_dir: Path | None) -> Path:
    """Beside the image; or under output_dir, mirroring the folder argument's tree."""
    if output_dir is None:
        return path.parent
    return output_dir if root is None else output_dir / path.parent.relative_to(root)


def folder_problem(folder: Path) -> str | None:
    """Why outputs cannot be written in a folder (created later, with its parents, where missing).

    It must be a folder we can write in, or its nearest existing ancestor must be one. A test
    file is created and removed there, so that read-only mounts and immutable folders are found
    even by root.

    Returns:
        The reason, worded for a user, or None when the folder is usable.
    """
    existing = folder
    while not os.path.exists(existing):
        if os.path.islink(existing):
            return f"{existing} is a broken symbolic link (to {os.readlink(existing)}); fix it or choose another"
        existing = existing.parent
    if not os.path.isdir(existing):
        if existing == folder:
            return "exists and is not a folder; choose another"
        return f"{existing} is a file, not a folder; choose another"
    try:
        handle, probe = tempfile.mkstemp(prefix=".clipseg-probe-", suffix=TEMP_SUFFIX, dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        return f"cannot write in {existing} ({exc.strerror or exc}); make it writable or choose another"
    return None


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError):  # Python 3.11's resolve() raises RuntimeError on a symlink loop
        return False
