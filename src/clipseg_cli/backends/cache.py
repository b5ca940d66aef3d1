"""Where graphs derived from a checkpoint live: one folder per (checkpoint content, our version, opset).

The cache sits beside the Hugging Face cache that holds the checkpoints (``$HF_HOME/clipseg/onnx``,
or ``$CLIPSEG_CACHE/onnx``), never in a checkpoint folder or a repository. A folder's name is a
hash of everything that made its graphs, so a changed checkpoint, release, opset, torch or
onnxruntime gets a fresh folder; the folders of an older state of the same checkpoint are removed
when the new one is built. Every file is written to a temporary name and renamed into place when complete.
Text prompts' embeddings are kept there too (``prompts/``, keyed by their token ids), so that a run
with prompts seen before never opens the text graph.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from importlib import metadata
from pathlib import Path

import numpy as np

from clipseg_cli import __version__
from clipseg_cli.errors import ClipSegError
from clipseg_cli.fingerprint import checkpoint_identity
from clipseg_cli.imaging.writing import atomic_write

OPSET = 17
LAYOUT = 2  # how an entry's files are laid out (2: optimised graphs, weights beside them); part of the key
CACHE_ENV = "CLIPSEG_CACHE"
_SOURCE_FILE = "checkpoint.txt"  # the checkpoint folder an entry was made from


class CacheUnwritable(ClipSegError):
    """The graph cache cannot be written (read-only, full, not a folder)."""


def cache_root() -> Path:
    """Returns: ``$CLIPSEG_CACHE/onnx``, else ``$HF_HOME/clipseg/onnx`` (huggingface_hub's HF_HOME)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser() / "onnx"
    from huggingface_hub import constants

    return Path(constants.HF_HOME).expanduser() / "clipseg" / "onnx"


def entry_dir(checkpoint: Path, root: Path | None = None) -> Path:
    """The cache folder of a checkpoint's graphs: named by the checkpoint's identity, our version, the opset
    and the versions of what exports and quantizes them (torch, onnxruntime).

    Returns:
        ``root/<24 hex>`` (not created here).
    """
    tools = " ".join(f"{name} {_version(name)}" for name in ("torch", "onnxruntime"))
    key = f"{checkpoint_identity(checkpoint)}\0{__version__}\0opset {OPSET}\0layout {LAYOUT}\0{tools}"
    return (root or cache_root()) / hashlib.sha256(key.encode()).hexdigest()[:24]


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "none"


def graph_path(entry: Path, graph: str, precision: str) -> Path:
    """Returns: the file of one graph (``segment``, ``text``, ``visual``) in one precision (fp32, int8)."""
    return entry / f"{graph}-{precision}.onnx"


def prepare(entry: Path, checkpoint: Path) -> None:
    """Create a checkpoint's entry (removing its stale ones) before anything is exported into it.

    Raises CacheUnwritable, naming the folder, when that fails.
    """
    if entry.is_dir():
        return
    try:
        entry.mkdir(parents=True, exist_ok=True)
        _remove_stale(entry, checkpoint)
        atomic_write(entry / _SOURCE_FILE, lambda handle: handle.write(_source(checkpoint).encode()))
    except OSError as exc:
        raise unwritable(exc, entry) from None


def unwritable(exc: OSError, where: Path) -> CacheUnwritable:
    """Returns: the error of a cache that refused a file (``exc``, about ``where`` unless it names a file)."""
    return CacheUnwritable(f"cannot write the ONNX graph cache {exc.filename or where}: "
                           f"{exc.strerror or exc} (set {CACHE_ENV} to a writable folder)")


def load_embedding(entry: Path, token_ids: np.ndarray) -> np.ndarray | None:
    """A text prompt's embedding stored by an earlier run, or None.

    Arguments:
        token_ids: T int64 ids of the prompt (unpadded).

    Returns:
        E float32, or None when not stored (or unreadable).
    """
    try:
        return np.load(_embedding_path(entry, token_ids), allow_pickle=False)
    except (OSError, ValueError):
        return None


def store_embedding(entry: Path, token_ids: np.ndarray, embedding: np.ndarray) -> None:
    """Store a text prompt's embedding (E float32) atomically; a cache that refuses it only costs speed."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(embedding, dtype=np.float32), allow_pickle=False)
    path = _embedding_path(entry, token_ids)
    try:
        path.parent.mkdir(exist_ok=True)
        atomic_write(path, lambda handle: handle.write(buffer.getvalue()))
    except OSError:
        return  # the next run embeds the prompt again


def _embedding_path(entry: Path, token_ids: np.ndarray) -> Path:
    digest = hashlib.sha256(np.asarray(token_ids, dtype="<i8").tobytes()).hexdigest()[:32]
    return entry / "prompts" / f"{digest}.npy"


def _source(checkpoint: Path) -> str:
    return os.fsdecode(Path(checkpoint).resolve())


def _remove_stale(entry: Path, checkpoint: Path) -> None:
    """Remove the other entries made from the same checkpoint folder (older weights, releases or opsets)."""
    source = _source(checkpoint)
    for other in entry.parent.iterdir():
        if other == entry or not (other / _SOURCE_FILE).is_file():
            continue
        try:
            if (other / _SOURCE_FILE).read_text(encoding="utf-8", errors="replace") == source:
                shutil.rmtree(other, ignore_errors=True)
        except OSError:
            continue
