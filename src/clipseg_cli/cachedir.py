"""clipseg's cache folder: where it is, the locks that keep live entries, and the checksums of cached files.

Everything clipseg caches lives under one root, `cache_root()`:

- ``onnx/<key>/``: a checkpoint's ONNX Runtime graphs (`backends.graph_cache`); ``onnx/<key>.lock`` is the entry's
  lock, and its modification time the entry's last use;
- ``embeddings/<key>/``: text prompts' embeddings made by those graphs (same key, same lock);
- ``activations/``: the image tower's activations that ``clipseg train`` reuses (`training.activation_cache`).

A process that uses an entry holds a shared lock on it (``fcntl.flock``) until it lets it go or ends (the
kernel drops the lock of a killed process); an entry is removed only under an exclusive lock taken without
waiting, so never while a live process reads or writes it. Each cached file carries a checksum written
when it is made (xxHash's XXH3-128: about 0.05 s for 550 MB in the page cache, 2-core EPYC; sha256 0.38 s,
blake2b 0.7 s), checked when the file is used.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import xxhash

try:
    import fcntl
except ImportError:  # Windows: no entry locks
    fcntl = None

CACHE_ENV = "CLIPSEG_CACHE"
KINDS = ("onnx", "embeddings", "activations")
SEAL = b"\0clipseg-xxh3\0"  # the trailer of a sealed file: this, then the 16-byte XXH3-128 of what precedes it
_BLOCK = 4 << 20


def cache_root() -> Path:
    """Returns: ``$CLIPSEG_CACHE``, else ``$HF_HOME/clipseg`` (``$XDG_CACHE_HOME/huggingface/clipseg``, else
    ``~/.cache/huggingface/clipseg``, as huggingface_hub places HF_HOME); an empty variable counts as unset."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser().absolute()
    hf_home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(hf_home).expanduser().absolute() / "clipseg"


# ---- checksums ---------------------------------------------------------------------------------------------


def digest_file(path: Path) -> str:
    """Returns: the hex XXH3-128 of a file's bytes."""
    digest = xxhash.xxh3_128()
    buffer = bytearray(_BLOCK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as stream:
        while count := stream.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()


def seal(data: bytes | memoryview) -> bytes:
    """Returns: ``data`` followed by its checksum (a .npy file stays readable by numpy: it ignores the trailer)."""
    return bytes(data) + SEAL + xxhash.xxh3_128(data).digest()


def sealed(data: bytes | memoryview) -> bool:
    """Returns: whether ``data`` (a whole file) ends with the checksum of the bytes before it."""
    tail = len(SEAL) + 16
    if len(data) < tail or bytes(data[-tail:-16]) != SEAL:
        return False
    return xxhash.xxh3_128(data[:-tail]).digest() == bytes(data[-16:])


def unsealed(data: bytes) -> bytes | None:
    """Returns: the bytes of a sealed file without the trailer, or None when they fail their checksum."""
    return data[: -len(SEAL) - 16] if sealed(data) else None


# ---- entry locks -------------------------------------------------------------------------------------------


class EntryLock:
    """A lock on one cache entry, held through an open lock file: shared by the processes that use the entry,
    exclusive for the one that removes it. Released by `release`, when collected, or when the process ends."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.release()


def use_entry(lock_file: Path) -> EntryLock:
    """Take a shared lock on an entry (waiting while another process removes it) and mark it used now.

    A lock that cannot be taken (a read-only cache, no ``fcntl``) protects nothing but is no error.

    Returns:
        The held lock.
    """
    fd = _lock(lock_file, exclusive=False, wait=True)
    if fd is not None:
        with suppress(OSError):
            os.utime(fd)  # the entry's last use
    return EntryLock(lock_file, fd)


def try_exclusive(lock_file: Path) -> EntryLock | None:
    """Returns: the exclusive lock of an entry that no live process uses, or None while one does."""
    if fcntl is None:
        return EntryLock(lock_file, None)
    fd = _lock(lock_file, exclusive=True, wait=False)
    return None if fd is None else EntryLock(lock_file, fd)


def _lock(lock_file: Path, exclusive: bool, wait: bool) -> int | None:
    """Lock ``lock_file`` (created if absent); retried when a remover unlinked it meanwhile. None: not taken."""
    if fcntl is None:
        return None
    mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB)
    while True:
        try:
            lock_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            return None
        try:
            fcntl.flock(fd, mode)
            if os.path.samestat(os.fstat(fd), os.stat(lock_file)):
                return fd
        except OSError:  # held (LOCK_NB), or unlinked by its remover: try again or give up
            if not wait:
                os.close(fd)
                return None
        os.close(fd)


# ---- sizes, last use and removal -----------------------------------------------------------------------------


def size_of(path: Path) -> int:
    """Returns: the bytes of a file, or of the files under a folder (links not followed)."""
    if path.is_symlink() or not path.is_dir():
        return path.lstat().st_size if os.path.lexists(path) else 0
    total = 0
    for folder, _, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                continue
    return total


def last_use(*paths: Path) -> float:
    """Returns: the latest modification time among ``paths`` that exist (0 when none does)."""
    times = [path.lstat().st_mtime for path in paths if os.path.lexists(path)]
    return max(times, default=0.0)


def remove(path: Path) -> None:
    """Remove a cache file or folder; a link is removed itself, never what it points to."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path)


def entries(folder: Path) -> Iterator[Path]:
    """Returns: the real folders directly in ``folder`` whose names are entry keys (hex), sorted."""
    if folder.is_symlink() or not folder.is_dir():
        return iter(())
    return iter(sorted(path for path in folder.iterdir()
                       if not path.is_symlink() and path.is_dir() and _is_key(path.name)))


def _is_key(name: str) -> bool:
    return len(name) >= 16 and all(char in "0123456789abcdef" for char in name)
