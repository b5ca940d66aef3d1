"""Find a checkpoint on disk or fetch it from the Hugging Face Hub, checked against the Hub's checksums."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from fnmatch import fnmatch
from pathlib import Path

from huggingface_hub import constants as hf_constants
from huggingface_hub import errors as hf_errors
from huggingface_hub import snapshot_download
from tqdm.auto import tqdm

from clipseg_cli.checkpoints.registry import available_models, resolve_name
from clipseg_cli.constants import CONFIG_FILE, DOWNLOAD_PATTERNS, SAFETENSORS_FILE
from clipseg_cli.errors import CheckpointError, ClipSegError
from clipseg_cli.imaging.writing import atomic_write

try:  # the HTTP client of huggingface_hub (httpx2 in 2.x); its transport errors are not OSErrors
    from httpx2 import HTTPError as _TransportError
except ImportError:  # older releases use requests, whose errors are OSErrors
    _TransportError = OSError

_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
_CHUNK = 1 << 20
_PATTERNS = list(DOWNLOAD_PATTERNS)  # what we fetch: never the pickled weights


class _NoProgress(tqdm):
    """A tqdm that never draws: handed to huggingface_hub when progress is off."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def locate(
    name: str,
    *,
    revision: str | None = None,
    offline: bool | None = None,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    endpoint: str | None = None,
) -> Path:
    """Find a checkpoint folder (Hugging Face layout): a directory as is, else the cache, else the Hub.

    ``offline=None`` honours ``HF_HUB_OFFLINE``; ``endpoint=None`` honours ``HF_ENDPOINT``.

    Returns:
        A directory holding config.json, model.safetensors and the preprocessing/tokenizer files.
    """
    folder = local_folder(name)
    if folder is not None:
        return folder
    repo_id = _hub_id(name)
    cached = _cached_snapshot(repo_id, revision, cache_dir)
    if cached is not None:
        return cached
    if _is_offline(offline):
        fetch = f"clipseg download-weights {name}" + (f" --revision {revision}" if revision else "")
        raise ClipSegError(
            f"{name}: weights are not in the local cache and downloads are off (offline); "
            f"fetch them first with: {fetch}"
        )
    return _fetch(repo_id, revision, progress, cache_dir, endpoint)


def local_folder(name: str) -> Path | None:
    """The folder ``name`` means, or None for a Hub id; a folder-like name where no folder is fails.

    A name is a folder when a folder of that name exists. Otherwise it is a missing folder, not a Hub id, when
    it is not a published name or alias and it starts with ``.``, ``/`` or ``~``, holds a backslash or more
    than one ``/``, ends with ``/``, or its first part is a folder that exists (``weights/refined`` where
    ``weights/`` is): a Hub id is ``owner/name``, and no owner is a folder here. Anything else is a Hub id.

    Returns:
        The folder (``~`` expanded), or None when ``name`` is a Hub id or an alias.
    """
    path = Path(name).expanduser()
    if name and path.is_dir():
        return path
    if resolve_name(name) != name or name in available_models():
        return None
    owner = name.split("/", 1)[0]
    folder_like = (
        path.is_absolute() or name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1
        or name.endswith("/") or ("/" in name and Path(owner).is_dir())
    )
    if folder_like:
        raise ClipSegError(
            f"{name}: no such checkpoint directory; check the path, or write a checkpoint there with: "
            f"clipseg download-weights --output-dir {name} (a Hub id is owner/name, e.g. {available_models()[0]})"
        )
    return None


def download(
    name: str,
    *,
    revision: str | None = None,
    output_dir: Path | None = None,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    endpoint: str | None = None,
) -> Path:
    """Fetch (or resume) a checkpoint into the Hugging Face cache, optionally copying it to ``output_dir``.

    Only ``DOWNLOAD_PATTERNS`` are fetched (never the pickled weights); every file is checked against
    the checksum the Hub publishes for it. A checkpoint folder (``local_folder``) is taken as it is, with
    nothing to fetch: ``clipseg download-weights DIR --prepare`` prepares a folder made elsewhere.

    Returns:
        The cache snapshot folder, or ``output_dir`` when given (a self-contained checkpoint folder).
    """
    folder = local_folder(name)
    if folder is not None and not (folder / CONFIG_FILE).is_file():
        raise ClipSegError(f"{name}: not a checkpoint directory (no {CONFIG_FILE} in it); "
                           f"write one there with: clipseg download-weights --output-dir {name}")
    snapshot = folder if folder is not None else _fetch(_hub_id(name), revision, progress, cache_dir, endpoint)
    if output_dir is None:
        return snapshot
    output_dir = Path(output_dir).expanduser()
    for source in _fetched_files(snapshot):
        _copy_atomic(source, output_dir / source.relative_to(snapshot))
    return output_dir


def _hub_id(name: str) -> str:
    """Resolve an alias and check that the result looks like ``owner/repo``."""
    repo_id = resolve_name(name)
    if not _HUB_ID.fullmatch(repo_id) or ".." in repo_id or "--" in repo_id:
        raise ClipSegError(
            f"{name}: unknown model; use one of {', '.join(available_models())}, another Hugging Face "
            "repo id (owner/name), or the path of a directory holding config.json and model.safetensors "
            "(write one with: clipseg download-weights NAME --output-dir DIR)"
        )
    return repo_id


def _is_offline(offline: bool | None) -> bool:
    """Resolve ``offline=None`` from HF_HUB_OFFLINE (read now, and as huggingface_hub read it at import)."""
    if offline is not None:
        return offline
    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return flag or bool(getattr(hf_constants, "HF_HUB_OFFLINE", False))


def _is_complete(folder: Path) -> bool:
    return (folder / CONFIG_FILE).is_file() and (folder / SAFETENSORS_FILE).is_file()


def _cached_snapshot(repo_id: str, revision: str | None, cache_dir: str | Path | None) -> Path | None:
    """The complete cached snapshot of ``repo_id`` at ``revision``, or None; no network."""
    try:
        folder = snapshot_download(
            repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=_PATTERNS, local_files_only=True
        )
    except (OSError, ValueError):  # not cached, incomplete, or an invalid id
        return None
    return Path(folder) if _is_complete(Path(folder)) else None


def _fetch(
    repo_id: str, revision: str | None, progress: bool, cache_dir: str | Path | None, endpoint: str | None
) -> Path:
    """Download what is missing into the cache, verify every file and return the snapshot folder."""
    try:
        snapshot = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=cache_dir,
                endpoint=endpoint,
                allow_patterns=_PATTERNS,
                tqdm_class=None if progress else _NoProgress,
            )
        )
    except (OSError, ValueError, _TransportError) as error:
        raise ClipSegError(f"{repo_id}: {_failure_reason(error, revision, endpoint)}") from error
    _verify_snapshot(repo_id, snapshot)
    missing = [file for file in (CONFIG_FILE, SAFETENSORS_FILE) if not (snapshot / file).is_file()]
    if missing:
        raise CheckpointError(repo_id, f"the repository has no {' or '.join(missing)}; it is not a usable checkpoint")
    return snapshot


def _failure_reason(error: Exception, revision: str | None, endpoint: str | None) -> str:
    """One line saying why the Hub did not deliver, and what to do."""
    hub = endpoint or hf_constants.ENDPOINT
    if isinstance(error, hf_errors.GatedRepoError):
        return "the repository is gated: accept its terms on the Hub, then log in with `hf auth login`"
    if isinstance(error, hf_errors.RepositoryNotFoundError):
        choices = ", ".join(available_models())
        return f"no such repository on {hub} (or it is private); published checkpoints: {choices}"
    if isinstance(error, hf_errors.RevisionNotFoundError):
        return f"revision {revision!r} does not exist; use a branch, tag or commit sha of the repository"
    if isinstance(error, hf_errors.HfHubHTTPError) and getattr(error, "response", None) is not None:
        return f"the Hub at {hub} answered HTTP {error.response.status_code}; run the command again later"
    if isinstance(error, hf_errors.LocalEntryNotFoundError):
        if _is_offline(None):
            return "the weights are not fully cached and HF_HUB_OFFLINE is set; unset it to download"
        return f"cannot reach the Hub at {hub} and the weights are not fully cached; check the connection"
    summary = (str(error).strip().splitlines() or [""])[0]
    return f"download failed ({type(error).__name__}: {summary}); run the command again"


def _fetched_files(snapshot: Path) -> list[Path]:
    """Files of ``snapshot`` that match DOWNLOAD_PATTERNS (another tool may have cached more)."""
    files = (path for path in sorted(snapshot.rglob("*")) if path.is_file())
    return [path for path in files if any(fnmatch(path.relative_to(snapshot).as_posix(), p) for p in DOWNLOAD_PATTERNS)]


def _verify_snapshot(repo_id: str, snapshot: Path) -> None:
    """Compare each file with the Hub's checksum; delete a mismatching file and raise CheckpointError.

    The expected checksum is the name of the blob a snapshot entry links to (huggingface_hub names blobs
    by ETag: the sha256 of an LFS file, the git blob sha1 of any other), or, where the cache holds no
    links, the tree listing that huggingface_hub caches beside the snapshots.
    """
    listed = _listed_checksums(snapshot)
    for path in _fetched_files(snapshot):
        relative = path.relative_to(snapshot).as_posix()
        expected = Path(os.readlink(path)).name if path.is_symlink() else listed.get(relative)
        if expected is None or len(expected) not in (40, 64):
            continue
        actual = _checksum(path, git_blob=len(expected) == 40)
        if actual != expected:
            blob = path.resolve()
            path.unlink()
            blob.unlink(missing_ok=True)
            kind = "git sha1" if len(expected) == 40 else "sha256"
            raise CheckpointError(
                f"{repo_id}/{relative}",
                f"downloaded content does not match its checksum ({kind} {expected}, got {actual}); "
                "run the command again",
            )


def _listed_checksums(snapshot: Path) -> dict[str, str]:
    """Checksums from huggingface_hub's cached tree listing (``trees/<commit>.json``), if present."""
    listing = snapshot.parent.parent / "trees" / f"{snapshot.name}.json"
    try:
        files = json.loads(listing.read_text(encoding="utf-8"))["files"]
        return {path: info.get("lfs_sha256") or info["blob_id"] for path, info in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _checksum(path: Path, *, git_blob: bool) -> str:
    """sha256 of the content, or for ``git_blob`` the git object id (sha1 of ``blob <size>\\0`` + content)."""
    digest = hashlib.sha1() if git_blob else hashlib.sha256()
    if git_blob:
        digest.update(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_atomic(source: Path, target: Path) -> None:
    """Copy through a temporary file in the target folder, so ``target`` is never partial."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with source.open("rb") as stream:
        atomic_write(target, lambda out: shutil.copyfileobj(stream, out))
