"""A bounded on-disk cache of arrays (the frozen image tower's activations), read by memory map.

Each entry is one ``.npy`` file named by the sha256 of everything that made it (checkpoint,
precision, preprocessing, image bytes, augmentation variant), written atomically. Once the cache
holds ``max_bytes``, new entries are not stored (they are recomputed when needed again), so the
cache never grows past its bound; entries of other runs count towards it and are reused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from clipseg_cli.imaging.writing import atomic_write

SUFFIX = ".npy"


def cache_key(**parts: object) -> str:
    """A key naming an entry by everything that made it.

    Returns:
        64 hex characters.
    """
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class ArrayCache:
    """Arrays on disk by key, memory-mapped when read; at most ``max_bytes`` on disk."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.used = sum(path.stat().st_size for path in self.folder.glob(f"*{SUFFIX}"))
        self.hits = self.misses = 0

    def get(self, key: str) -> np.ndarray | None:
        """Returns: the stored array as a read-only memory map, or None when absent or unreadable."""
        path = self.folder / (key + SUFFIX)
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError):  # absent, or damaged (then it is rewritten)
            self.misses += 1
            return None
        self.hits += 1
        return array

    def put(self, key: str, array: np.ndarray) -> None:
        """Store an array, unless the cache is full."""
        size = array.nbytes + 128  # the .npy header
        if self.used + size > self.max_bytes:
            return
        atomic_write(self.folder / (key + SUFFIX), lambda handle: np.save(handle, np.ascontiguousarray(array)))
        self.used += size
