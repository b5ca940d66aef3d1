"""Watching input folders: the image files that land in them, each once it is complete."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from clipseg_cli.run.inputs import IMAGE_EXTENSIONS, is_own_output

SETTLE_S = 1.0  # a file is complete once its size and mtime have not changed for this long (and no one writes it)
NEW_FOLDER_S = 2.0  # a folder that appears is listed again each round this long (its watch is added meanwhile)
POLL_MS = 200  # how often pending files are looked at again while nothing else happens
LOOP = (-1, -1)  # the signature of a link that leads round in a loop: it never changes, and fails as an input


def real_path(path: str | os.PathLike[str]) -> Path:
    """The absolute path with every link resolved as far as it goes: never raises (Python 3.11's ``resolve()``
    raises RuntimeError on a symlink loop).

    Returns:
        The path.
    """
    return Path(os.path.realpath(path))


def ready_files(folders: Sequence[Path], *, recursive: bool, skip: Path | None = None,
                stop: threading.Event | None = None, settle: float = SETTLE_S,
                since_ns: int | None = None) -> Iterator[set[Path]]:
    """The image files that are added to or changed in ``folders`` from now on, each once it is complete.

    A file is complete when no process holds it open for writing (where Linux can tell: a read lease is
    refused while a writer has it open) and its size and modification time stayed the same for ``settle``
    seconds (a copy in chunks, a download, ``cp`` of a large file); a file renamed into a folder is complete
    at once after that wait, and a file replaced is yielded again. A folder that appears is listed at once
    (files written into it before its watch was set up count). A link that leads round in a loop is yielded
    (it fails as an input, in one line). Hidden files, our own outputs and anything under ``skip`` (the
    output folder) are left out; without ``recursive`` only the folders' own files count.

    Arguments:
        folders: the folders to watch (they must exist).
        recursive: whether files in subfolders count.
        skip: a folder whose files never count (the output folder).
        stop: ends the iteration when set (checked at least every POLL_MS).
        settle: seconds a file must stay unchanged before it is yielded.
        since_ns: files changed from this time on (``time.time_ns()``; default: the call) count even
            when they landed before the watch was set up (the first listing is made once it is).

    Yields:
        Sets of complete files (absolute paths), in the order they became complete; an empty set when a
        wanted file was removed (the names of the others may change).
    """
    from watchfiles import Change, watch

    since_ns = time.time_ns() if since_ns is None else since_ns
    roots = [real_path(folder) for folder in folders]
    skipped = real_path(skip) if skip is not None else None
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

    def list_folder(folder: Path, now: float, changed_since: int | None) -> None:
        for path in _files_under(folder, recursive):
            if wanted(path) and path not in pending and (changed_since is None or _changed_since(path, changed_since)):
                pending[path] = (_signature(path), now)

    changes = watch(*roots, stop_event=stop, recursive=recursive, yield_on_timeout=True, rust_timeout=POLL_MS,
                    debounce=POLL_MS, step=50, raise_interrupt=True)
    listed = False
    new_folders: dict[Path, float] = {}  # folders that appeared -> when: listed each round until their watch is sure
    for batch in changes:
        now = time.monotonic()
        if not listed:  # the watch is set up now: what landed before it is found by a listing, once
            listed = True
            for root in roots:
                list_folder(root, now, since_ns)
        removed = False
        for change, name in batch:
            path = Path(name)
            if change == Change.deleted:
                removed = pending.pop(path, None) is not None or wanted(path) or removed
            elif recursive and change == Change.added and _is_real_folder(path) and not (
                    skipped is not None and path.is_relative_to(skipped)):
                new_folders.setdefault(path, now)
            elif wanted(path):
                pending[path] = (_signature(path), now)
        for folder, appeared in list(new_folders.items()):  # files written before the folder's own watch was set up
            list_folder(folder, now, None)
            if now - appeared >= max(settle, NEW_FOLDER_S):
                del new_folders[folder]
        done: set[Path] = set()
        for path, (seen, since) in list(pending.items()):
            current = _signature(path)
            if current is None:
                del pending[path]
            elif current != seen:
                pending[path] = (current, now)
            elif now - since >= settle and (current == LOOP or not _held_by_a_writer(path)):
                del pending[path]
                done.add(path)
        if done or removed:
            yield done


def _files_under(folder: Path, recursive: bool) -> Iterator[Path]:
    """The entries of a folder (and, when ``recursive``, its subfolders, links to folders not followed)."""
    if not recursive:
        try:
            yield from folder.iterdir()
        except OSError:
            return
        return
    for parent, _, names in os.walk(folder):  # followlinks=False: a link to a folder is not walked into
        for name in names:
            yield Path(parent, name)


def _is_real_folder(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _changed_since(path: Path, since_ns: int) -> bool:
    try:
        status = os.lstat(path)
    except OSError:
        return False
    return max(status.st_mtime_ns, status.st_ctime_ns) >= since_ns


def _signature(path: Path) -> tuple[int, int] | None:
    """(size, mtime in ns) of a regular file; `LOOP` for a link that leads round in a loop; None where there is none."""
    try:
        status = os.stat(path)
    except OSError as exc:
        return LOOP if exc.errno == errno.ELOOP else None
    return (status.st_size, status.st_mtime_ns) if os.path.isfile(path) else None


def _held_by_a_writer(path: Path) -> bool:
    """Whether some process holds the file open for writing: Linux refuses a read lease (EAGAIN) then.

    Returns:
        False where it cannot be told (not Linux, a file of another user, NFS): the settle time decides.
    """
    import fcntl

    lease = getattr(fcntl, "F_SETLEASE", None)
    if lease is None:
        return False
    try:
        handle = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.fcntl(handle, lease, fcntl.F_RDLCK)
    except OSError as exc:
        return exc.errno in (errno.EAGAIN, errno.EBUSY)
    else:
        fcntl.fcntl(handle, lease, fcntl.F_UNLCK)
        return False
    finally:
        os.close(handle)
