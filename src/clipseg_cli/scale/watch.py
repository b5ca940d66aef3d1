"""Watching input folders: the image files that land in them, each once it is complete."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from clipseg_cli.run.inputs import IMAGE_EXTENSIONS, is_own_output

SETTLE_S = 1.0  # a file is complete once its size and mtime have not changed for this long
POLL_MS = 200  # how often pending files are looked at again while nothing else happens


def ready_files(folders: Sequence[Path], *, recursive: bool, skip: Path | None = None,
                stop: threading.Event | None = None, settle: float = SETTLE_S,
                since_ns: int | None = None) -> Iterator[set[Path]]:
    """The image files that are added to or changed in ``folders`` from now on, each once it is complete.

    A file is complete when its size and modification time stayed the same for ``settle`` seconds
    (a copy in chunks, a download, ``cp`` of a large file); a file renamed into a folder is complete
    at once after that wait, and a file replaced is yielded again. Hidden files, our own outputs and
    anything under ``skip`` (the output folder) are left out; without ``recursive`` only the
    folders' own files count.

    Arguments:
        folders: the folders to watch (they must exist).
        recursive: whether files in subfolders count.
        skip: a folder whose files never count (the output folder).
        stop: ends the iteration when set (checked at least every POLL_MS).
        settle: seconds a file must stay unchanged before it is yielded.
        since_ns: files changed from this time on (``time.time_ns()``; default: the call) count even
            when they landed before the watch was set up (the first listing is made once it is).

    Yields:
        Sets of complete files (absolute paths), in the order they became complete.
    """
    from watchfiles import Change, watch

    since_ns = time.time_ns() if since_ns is None else since_ns
    roots = [folder.resolve() for folder in folders]
    skipped = skip.resolve() if skip is not None else None
    stop = stop or threading.Event()
    pending: dict[Path, tuple[tuple[int, int], float]] = {}  # path -> (size, mtime_ns), when first seen so

    def wanted(path: Path) -> bool:
        if path.suffix.lower() not in IMAGE_EXTENSIONS or path.name.startswith(".") or is_own_output(path):
            return False
        if skipped is not None and path.is_relative_to(skipped):
            return False
        for root in roots:
            if path.is_relative_to(root):
                parts = path.relative_to(root).parts
                return len(parts) == 1 or (recursive and not any(part.startswith(".") for part in parts[:-1]))
        return False

    changes = watch(*roots, stop_event=stop, recursive=recursive, yield_on_timeout=True, rust_timeout=POLL_MS,
                    debounce=POLL_MS, step=50, raise_interrupt=True)
    listed = False
    for batch in changes:
        now = time.monotonic()
        if not listed:  # the watch is set up now: what landed before it is found by a listing, once
            listed = True
            for root in roots:
                for path in (root.rglob("*") if recursive else root.iterdir()):
                    if wanted(path) and path not in pending and _changed_since(path, since_ns):
                        pending[path] = (_signature(path), now)
        for change, name in batch:
            path = Path(name)
            if change == Change.deleted:
                pending.pop(path, None)
            elif wanted(path):
                pending[path] = (_signature(path), now)
        done: set[Path] = set()
        for path, (seen, since) in list(pending.items()):
            current = _signature(path)
            if current is None:
                del pending[path]
            elif current != seen:
                pending[path] = (current, now)
            elif now - since >= settle:
                del pending[path]
                done.add(path)
        if done:
            yield done


def _changed_since(path: Path, since_ns: int) -> bool:
    try:
        status = os.stat(path)
    except OSError:
        return False
    return max(status.st_mtime_ns, status.st_ctime_ns) >= since_ns


def _signature(path: Path) -> tuple[int, int] | None:
    """(size, mtime in ns) of a regular file, or None where there is none."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (status.st_size, status.st_mtime_ns) if os.path.isfile(path) else None
