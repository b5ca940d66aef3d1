"""Where graphs derived from a checkpoint live: one entry per (checkpoint content, our version, opset, tools).

An entry holds the ONNX graphs (`backends.ort`) and the bf16 TorchScript programs (`backends.traced`), each file
checked and sealed alike.

An entry is ``<root>/onnx/<key>/`` under clipseg's cache root (`cachedir.cache_root`), its text prompts'
embeddings in ``<root>/embeddings/<key>/`` (keyed by their token ids, so that a run with prompts seen before
never opens the text graph; at most `EMBEDDING_LIMIT` of them, the least recently used dropped first). The key
is a hash of everything that made the graphs, so a changed checkpoint, release, opset, torch or onnxruntime gets
a fresh entry. Every file is written to a temporary name and renamed into place when complete, and carries a
checksum (``<graph>.onnx.sum`` beside a graph; a trailer in an embedding's file) that is checked when it is
used: a damaged one is made again.

A process using an entry holds its lock (`cachedir.use_entry`). When a new entry is made, the others are cleaned
up, but never one that a live process holds: the entries of the same release and checkpoint folder with other
weights at once (their weights are gone), the others (other releases sharing the cache) once unused for
`KEEP_DAYS` days, or the least recently used first while all entries together exceed `LIMIT_BYTES`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from clipseg_cli import __version__
from clipseg_cli.cachedir import (
    CACHE_ENV,
    EntryLock,
    cache_root,
    digest_file,
    entries,
    last_use,
    remove,
    seal,
    size_of,
    try_exclusive,
    unsealed,
    use_entry,
)
from clipseg_cli.constants import PROMPT_EMBEDDING_LIMIT
from clipseg_cli.errors import ClipSegError
from clipseg_cli.fingerprint import checkpoint_digest
from clipseg_cli.imaging.writing import atomic_write

OPSET = 17
LAYOUT = 3  # how an entry's files are laid out (3: optimised graphs, weights beside them, checksums); in the key
KEEP_DAYS = 30  # entries of other releases are kept this long after their last use
LIMIT_BYTES = 8 << 30  # ... while all entries together stay below this
EMBEDDING_LIMIT = PROMPT_EMBEDDING_LIMIT  # text embeddings kept on disk per entry, as in memory
ABOUT_FILE = "entry.json"  # what made an entry: the checkpoint folder, its digest (key "identity"), the release


class CacheUnwritable(ClipSegError):
    """The graph cache cannot be written (read-only, full, not a folder)."""


class CacheDamaged(Exception):
    """A cached graph failed its checksum (the message says which file)."""


def entry_dir(checkpoint: Path, root: Path | None = None) -> Path:
    """The cache folder of a checkpoint's graphs: named by the checkpoint's digest, our version, the opset
    and the versions of what exports and quantizes them (torch, onnxruntime).

    Returns:
        ``<cache root>/onnx/<24 hex>`` (not created here).
    """
    key = f"{checkpoint_digest(checkpoint)}\0{_maker()}"
    return (root or cache_root() / "onnx") / hashlib.sha256(key.encode()).hexdigest()[:24]


def _maker() -> str:
    tools = " ".join(f"{name} {_version(name)}" for name in ("torch", "onnxruntime"))
    return f"{__version__}\0opset {OPSET}\0layout {LAYOUT}\0{tools}"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "none"


def lock_path(entry: Path) -> Path:
    """Returns: the lock file of an entry (beside it); its modification time is the entry's last use."""
    return entry.with_name(entry.name + ".lock")


def embeddings_dir(entry: Path) -> Path:
    """Returns: the folder of the text embeddings made with an entry's graphs (``<root>/embeddings/<key>``)."""
    return entry.parent.parent / "embeddings" / entry.name


def use(entry: Path) -> EntryLock:
    """Returns: a shared lock on ``entry``, held while this process uses it (no cleanup removes it meanwhile)."""
    return use_entry(lock_path(entry))


def graph_path(entry: Path, graph: str, precision: str) -> Path:
    """Returns: the file of one graph (``segment``, ``text``, ``visual``) in one precision (fp32, int8)."""
    return entry / f"{graph}-{precision}.onnx"


def program_path(entry: Path, program: str) -> Path:
    """Returns: the file of one bf16 TorchScript program (``segment``, ``text``, ``visual``; `backends.traced`)."""
    return entry / f"{program}-bf16.torchscript"


def _sum_path(graph: Path) -> Path:
    return graph.with_name(graph.name + ".sum")


def _graph_files(graph: Path) -> list[Path]:
    """Returns: a stored graph and, when it has one, its weights file (`backends.optimize.weights_path`)."""
    weights = graph.with_name(graph.name + ".data")
    return [graph, weights] if weights.exists() else [graph]


def seal_graph(graph: Path) -> None:
    """Write the checksums of a graph just stored (and of its weights file) beside it.

    Raises OSError naming the checksum file when that fails.
    """
    sums = {path.name: digest_file(path) for path in _graph_files(graph)}
    atomic_write(_sum_path(graph), lambda handle: handle.write(json.dumps({"xxh3_128": sums}).encode()))


def verify_graph(graph: Path) -> None:
    """Check a stored graph's files against the checksums written when it was stored (about 0.05 s for the
    published size's 550 MB, from the page cache).

    Raises CacheDamaged naming the first file that fails.
    """
    try:
        sums = json.loads(_sum_path(graph).read_bytes())["xxh3_128"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CacheDamaged(f"the cached graph {graph} has no valid checksum file") from None
    for path in _graph_files(graph):
        try:
            good = isinstance(sums, dict) and sums.get(path.name) == digest_file(path)
        except OSError as exc:
            raise CacheDamaged(f"the cached file {path} cannot be read ({exc.strerror or exc})") from None
        if not good:
            raise CacheDamaged(f"the cached file {path} fails its checksum")
    if len(sums) != len(_graph_files(graph)):
        raise CacheDamaged(f"the weights file of the cached graph {graph} is missing")


def prepare(entry: Path, checkpoint: Path) -> None:
    """Create a checkpoint's entry (cleaning up the others, see the module's text) before anything is exported
    into it.

    Raises CacheUnwritable, naming the folder, when that fails.
    """
    if entry.is_dir():
        return
    try:
        entry.mkdir(parents=True, exist_ok=True)
        about = {"checkpoint": _source(checkpoint), "identity": checkpoint_digest(checkpoint), "maker": _maker(),
                 "clipseg": __version__}
        atomic_write(entry / ABOUT_FILE, lambda handle: handle.write(json.dumps(about).encode()))
    except OSError as exc:
        raise unwritable(exc, entry) from None
    clean_up(entry.parent, keep=entry)


def describe(entry: Path) -> dict:
    """Returns: what made an entry ({"checkpoint", "identity", "maker", "clipseg"}), or {} when unknown."""
    try:
        about = json.loads((entry / ABOUT_FILE).read_bytes())
    except (OSError, ValueError):
        return {}
    return about if isinstance(about, dict) else {}


def clean_up(folder: Path, keep: Path, now: float | None = None) -> list[Path]:
    """Remove the entries of ``folder`` (``<root>/onnx``) that are not needed any more, never ``keep`` nor one
    a live process holds: those of this release made from ``keep``'s checkpoint folder (other weights),
    those unused for KEEP_DAYS, then the least recently used while all exceed LIMIT_BYTES.

    Returns:
        The entries removed.
    """
    now = time.time() if now is None else now
    mine = describe(keep)
    others = []
    for entry in entries(folder):
        if entry == keep:
            continue
        about = describe(entry)
        replaced = about.get("maker") == mine.get("maker") and about.get("checkpoint") == mine.get("checkpoint")
        used = last_use(entry, lock_path(entry))
        others.append((replaced or now - used > KEEP_DAYS * 86400, used, entry))
    total = size_of(keep) + sum(size_of(entry) + size_of(embeddings_dir(entry)) for _, _, entry in others)
    removed = []
    for stale, _, entry in sorted(others, key=lambda item: (not item[0], item[1])):  # stale first, then oldest
        if not stale and total <= LIMIT_BYTES:
            break
        size = size_of(entry) + size_of(embeddings_dir(entry))
        if remove_entry(entry):
            removed.append(entry)
            total -= size
    return removed


def remove_entry(entry: Path, parts: tuple[str, ...] = ("onnx", "embeddings")) -> bool:
    """Remove an entry's graphs and/or embeddings unless a live process holds it (its lock goes with both).

    Returns:
        False when it is in use (nothing removed) or cannot be removed.
    """
    lock = try_exclusive(lock_path(entry))
    if lock is None:
        return False
    try:
        for part, path in (("onnx", entry), ("embeddings", embeddings_dir(entry))):
            if part in parts and os.path.lexists(path):
                remove(path)
        if not os.path.lexists(entry) and not os.path.lexists(embeddings_dir(entry)):
            lock_path(entry).unlink(missing_ok=True)
    except OSError:
        return False
    finally:
        lock.release()
    return True


def unwritable(exc: OSError, where: Path) -> CacheUnwritable:
    """Returns: the error of a cache that refused a file (``exc``, about ``where`` unless it names a file)."""
    return CacheUnwritable(f"cannot write the ONNX graph cache {exc.filename or where}: "
                           f"{exc.strerror or exc} (set {CACHE_ENV} to a writable folder)")


def load_embedding(entry: Path, token_ids: np.ndarray, dim: int, note=None) -> np.ndarray | None:
    """A text prompt's embedding stored by an earlier run, or None.

    One that fails its checksum, is not a finite E-vector or cannot be read is removed (and computed again
    by the caller); ``note`` (a callable taking one line) is told so.

    Arguments:
        token_ids: T int64 ids of the prompt (unpadded).
        dim: E, the embedding's length.

    Returns:
        E float32, or None when not stored (or damaged).
    """
    path = _embedding_path(entry, token_ids)
    try:
        data = path.read_bytes()
    except OSError:
        return None
    payload = unsealed(data)
    try:
        embedding = None if payload is None else np.load(io.BytesIO(payload), allow_pickle=False)
    except (OSError, ValueError):
        embedding = None
    if (embedding is not None and embedding.shape == (dim,) and embedding.dtype == np.float32
            and np.isfinite(embedding).all()):
        with contextlib.suppress(OSError):  # its use: the bound drops the least recently used first
            os.utime(path)
        return embedding
    if note is not None:
        note(f"the cached prompt embedding {path} is damaged; computing it again")
    path.unlink(missing_ok=True)
    return None


def store_embedding(entry: Path, token_ids: np.ndarray, embedding: np.ndarray) -> None:
    """Store a text prompt's embedding (E float32) atomically; a cache that refuses it only costs speed."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(embedding, dtype=np.float32), allow_pickle=False)
    path = _embedding_path(entry, token_ids)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda handle: handle.write(seal(buffer.getbuffer())))
    except OSError:
        return  # the next run embeds the prompt again
    bound_embeddings(path.parent, EMBEDDING_LIMIT)


def bound_embeddings(folder: Path, limit: int) -> int:
    """Keep at most ``limit`` embeddings in an entry's folder: the least recently used (stored or loaded) go first.

    Returns:
        How many were removed.
    """
    try:
        stored = [(item.stat().st_mtime_ns, item.path) for item in os.scandir(folder) if item.name.endswith(".npy")]
    except OSError:
        return 0
    removed = 0
    for _, path in sorted(stored)[: max(0, len(stored) - limit)]:
        with contextlib.suppress(OSError):  # another process removed it first
            os.unlink(path)
            removed += 1
    return removed


def clear_embeddings(entry: Path) -> bool:
    """Remove an entry's stored embeddings, in use or not: each file stands alone, and a process that misses one
    embeds its prompt again. The folder goes too when no process holds the entry.

    Returns:
        False when a file could not be removed.
    """
    folder = embeddings_dir(entry)
    if not os.path.lexists(folder):
        return True
    if folder.is_symlink() or not folder.is_dir():
        return remove_entry(entry, ("embeddings",))
    try:
        for item in folder.iterdir():
            if item.suffix == ".npy" and not item.is_dir():
                item.unlink(missing_ok=True)
    except OSError:
        return False
    remove_entry(entry, ("embeddings",))  # the empty folder, when nobody holds the entry
    return True


def _embedding_path(entry: Path, token_ids: np.ndarray) -> Path:
    digest = hashlib.sha256(np.asarray(token_ids, dtype="<i8").tobytes()).hexdigest()[:32]
    return embeddings_dir(entry) / f"{digest}.npy"


def _source(checkpoint: Path) -> str:
    return os.fsdecode(Path(checkpoint).resolve())
