"""Which files are videos, where each video's outputs go, and what they are called.

Per (video, prompt): ``{stem}.{label}.mask.mkv``, ``{stem}.{label}.overlay.mp4`` and
``{stem}.{label}.cutout.mov`` (or ``.cutout.webm``), the labels of ``clipseg batch``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from clipseg_cli.errors import ClipSegError
from clipseg_cli.run.inputs import WorkItem, file_id, output_stems

VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts",
                              ".m2ts", ".wmv", ".flv", ".3gp", ".ogv", ".mxf"})
OWN_SUFFIXES = (".mask.mkv", ".overlay.mp4", ".cutout.mov", ".cutout.webm")
WORK_SUFFIX = ".clipseg-video"  # the hidden folder of a video's finished chunks, until its outputs are whole


def is_own_output(path: Path) -> bool:
    """Whether a file is one of our video outputs (never an input)."""
    return path.name.lower().endswith(OWN_SUFFIXES)


def collect_videos(inputs: Iterable[str], *, output_dir: Path, recursive: bool = False) -> list[WorkItem]:
    """Work items for video files and folders of them; the outputs mirror each folder argument's tree.

    A file named on the command line is taken whatever its extension (a missing one fails with the others);
    in folders, files with a video extension (`VIDEO_EXTENSIONS`), hidden ones and our outputs left out.
    Each file is taken once; stems are unique per output folder, as ``clipseg batch`` names them.

    Returns:
        Items in input order.
    """
    placed: list[tuple[Path, Path]] = []
    seen: set[object] = set()
    for arg in inputs:
        if arg == "":
            raise ClipSegError('an input is an empty path (""); give a video file or a folder')
        root = Path(arg)
        found = [(root, output_dir)] if not root.is_dir() else [
            (path, output_dir / path.parent.relative_to(root)) for path in _walk(root, recursive, output_dir)]
        for path, target in found:
            key = file_id(path) or os.path.abspath(path)
            if key not in seen and not is_own_output(path):
                seen.add(key)
                placed.append((path, target))
    stems = output_stems(placed)
    return [WorkItem(path, target, stem) for (path, target), stem in zip(placed, stems, strict=True)]


def _walk(folder: Path, recursive: bool, skip: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if recursive and not d.startswith(".")
                         and os.path.realpath(Path(root, d)) != os.path.realpath(skip))
        found += [Path(root, name) for name in sorted(files)
                  if not name.startswith(".") and Path(name).suffix.lower() in VIDEO_EXTENSIONS]
    return found


def output_path(item: WorkItem, label: str, kind: str, suffix: str) -> Path:
    """Returns: the file of one (video, prompt, kind): ``{stem}.{label}.{kind}.{suffix}``."""
    return item.output_dir / f"{item.stem}.{label}.{kind}.{suffix}"


def work_folder(item: WorkItem) -> Path:
    """Returns: the hidden folder of a video's finished chunks, beside its outputs."""
    return item.output_dir / f".{item.stem}{WORK_SUFFIX}"
