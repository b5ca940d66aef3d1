"""A bounded on-disk cache of arrays (the frozen image tower's activations), read by memory map.

Each entry is one ``.npy`` file named by the sha256 of everything that made it (checkpoint,
precision, preprocessing, image bytes, augmentation variant), written atomically with a checksum after
the array (`cachedir.seal`; numpy ignores it). A file is checked the first time a run reads it (about
1 ms per 4.5 MB variant of the published size); one that fails is computed again, with one line to
``log``. Once the cache holds ``max_bytes``, new entries are not stored (they are recomputed when
needed again), so the cache never grows past its bound; entries of other runs count towards it and are
reused. A run holds the folder's lock (``.lock``, shared) while it uses it: ``clipseg cache clear`` leaves
a folder in use alone.
"""

from __future__ import annotations

import hashlib
import io
import json
import mmap
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from clipseg_cli.cachedir import cache_root, seal, sealed, use_entry
from clipseg_cli.imaging.writing import atomic_write

SUFFIX = ".npy"
LOCK_FILE = ".lock"


def default_cache_dir() -> Path:
    """Returns: where activations are cached unless told: ``<cache root>/activations`` (`cachedir.cache_root`)."""
    return cache_root() / "activations"


def cache_key(**parts: object) -> str:
    """A key naming an entry by everything that made it.

    Returns:
        64 hex characters.
    """
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class ArrayCache:
    """Arrays on disk by key, memory-mapped when read; at most ``max_bytes`` on disk."""

    def __init__(self, folder: Path, max_bytes: int, log: Callable[[str], None] | None = None) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.lock = use_entry(self.folder / LOCK_FILE)
        self.max_bytes = max_bytes
        self.used = sum(path.stat().st_size for path in self.folder.glob(f"*{SUFFIX}"))
        self.hits = self.misses = 0
        self.log = log
        self._checked: set[str] = set()  # keys whose file passed its checksum in this run

    def get(self, key: str) -> np.ndarray | None:
        """Returns: the stored array as a read-only memory map, or None when absent or damaged (then removed)."""
        path = self.folder / (key + SUFFIX)
        if not path.exists():
            self.misses += 1
            return None
        try:
            if key not in self._checked:
                self._check(path)
                os.utime(path)  # its last use, for `clipseg cache`
                self._checked.add(key)
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            self._drop(path, exc)
            self.misses += 1
            return None
        self.hits += 1
        return array

    def put(self, key: str, array: np.ndarray) -> None:
        """Store an array with its checksum, unless the cache is full (its bound, or its disk: then it stores no more,
        saying so once; the run goes on, computing what it could not store)."""
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(array))
        data = seal(buffer.getbuffer())
        if self.used + len(data) > self.max_bytes:
            return
        try:
            atomic_write(self.folder / (key + SUFFIX), lambda handle: handle.write(data))
        except OSError as exc:
            self.max_bytes = self.used  # the disk is full (or read-only): nothing more is tried
            if self.log is not None:
                self.log(f"clipseg: the activation cache {self.folder} cannot take more ({exc.strerror or exc}); "
                         "computing the rest each epoch")
            return
        self._checked.add(key)
        self.used += len(data)

    def _check(self, path: Path) -> None:
        with open(path, "rb") as stream, mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if not sealed(data):
                raise ValueError("fails its checksum")

    def _drop(self, path: Path, problem: Exception) -> None:
        """Remove a damaged file (it is computed again and stored in its place), saying so."""
        try:
            size = path.stat().st_size
            path.unlink()
            self.used -= size
        except OSError:
            pass
        if self.log is not None:
            self.log(f"clipseg: the cached activations {path} are damaged ({problem}); computing them again")
