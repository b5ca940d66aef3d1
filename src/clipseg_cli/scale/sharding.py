"""Job arrays: split one batch into N shards that N workers run apart, with the same outputs as one run.

Each input goes to the shard given by the sha256 of its path relative to its input root (for a
folder argument: the path inside that folder; for a file: its name), so every worker computes the
same split from the same command line, adding an image moves only that image, and the shards
together are exactly the unsharded run.

A finished shard leaves, in ``OUTPUT_DIR/.clipseg-shards/``, ``shard-K-of-N.jsonl`` (its JSON
lines, one per image and prompt) and ``shard-K-of-N.done`` (written last, only when every image of
the shard is done). The marker holds the key of the run (the content of its inputs, the weights,
prompts, settings) and the listing it named its outputs from. A marker is a hint: a rerun of a done
shard still checks every output's fingerprint as a plain rerun does; the marker only gives back its
stored JSON lines and tells when shards saw different inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from clipseg_cli.errors import ClipSegError
from clipseg_cli.run.inputs import WorkItem

SHARD_FOLDER = ".clipseg-shards"
COUNT_VARIABLE = "CLIPSEG_SHARD_COUNT"  # the shard count where the scheduler gives only an index (Kubernetes)
INDEX_VARIABLE = "CLIPSEG_SHARD_INDEX"  # any other scheduler or CI matrix: index and count by hand
_SPEC = re.compile(r"\s*([0-9]+)\s*/\s*([0-9]+)\s*", re.ASCII)
_NUMBER = re.compile(r"\s*([0-9]+)\s*", re.ASCII)
MAX_SHARDS = 100_000  # more markers than any job array has: `clipseg shards` stays quick


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``, numbered from 0."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def name(self) -> str:
        """Returns: the file-name stem of its manifest and marker, e.g. ``shard-3-of-10``."""
        return f"shard-{self.index}-of-{self.count}"

    def holds(self, key: str) -> bool:
        """Whether the input with this key (`item_key`) belongs to this shard."""
        digest = hashlib.sha256(os.fsencode(key)).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index


def parse_shard(spec: str, environ: Mapping[str, str] | None = None) -> Shard:
    """``K/N`` (0 <= K < N), or ``auto``: K and N from the scheduler's environment (`shard_from_env`).

    Raises:
        ClipSegError: one line saying what was wrong.
    """
    if spec.strip().lower() == "auto":
        return shard_from_env(os.environ if environ is None else environ)
    match = _SPEC.fullmatch(spec)
    if not match:
        raise ClipSegError(f"--shard {spec!r}: give K/N (shard K of N, numbered from 0, e.g. 0/4) or auto")
    return _checked(int(match[1]), int(match[2]), f"--shard {spec}")


def shard_from_env(environ: Mapping[str, str]) -> Shard:
    """The shard a scheduler's array task runs, from its environment.

    SLURM: SLURM_ARRAY_TASK_ID, with SLURM_ARRAY_TASK_MIN and _MAX (and _STEP), or _COUNT.
    Kubernetes indexed Job: JOB_COMPLETION_INDEX with CLIPSEG_SHARD_COUNT (set it to the Job's
    completions). Anything else: CLIPSEG_SHARD_INDEX with CLIPSEG_SHARD_COUNT.

    Raises:
        ClipSegError: when none is set, or the values do not make a shard.
    """
    def number(name: str) -> int:
        value = environ.get(name, "")
        match = _NUMBER.fullmatch(value)
        if not match:
            raise ClipSegError(f"--shard auto: {name}={value!r} is not a whole number (ASCII digits)")
        return int(match[1])

    if "SLURM_ARRAY_TASK_ID" in environ:
        task = number("SLURM_ARRAY_TASK_ID")
        if "SLURM_ARRAY_TASK_MIN" in environ and "SLURM_ARRAY_TASK_MAX" in environ:
            low, high = number("SLURM_ARRAY_TASK_MIN"), number("SLURM_ARRAY_TASK_MAX")
            step = number("SLURM_ARRAY_TASK_STEP") if "SLURM_ARRAY_TASK_STEP" in environ else 1
            if step < 1 or (task - low) % step:
                raise ClipSegError("--shard auto: the SLURM array is not a plain range (--array=0-N or 0-N:STEP); "
                                   "give --shard K/N yourself")
            return _checked((task - low) // step, (high - low) // step + 1, "--shard auto (SLURM array)")
        if "SLURM_ARRAY_TASK_COUNT" in environ:
            return _checked(task, number("SLURM_ARRAY_TASK_COUNT"), "--shard auto (SLURM array)")
        raise ClipSegError("--shard auto: SLURM_ARRAY_TASK_ID is set but neither SLURM_ARRAY_TASK_COUNT nor "
                           "SLURM_ARRAY_TASK_MIN/MAX; give --shard K/N yourself")
    for index_name in ("JOB_COMPLETION_INDEX", INDEX_VARIABLE):
        if index_name in environ:
            if COUNT_VARIABLE not in environ:
                raise ClipSegError(f"--shard auto: {index_name} is set but not {COUNT_VARIABLE}; set it to the "
                                   "number of shards (a Kubernetes Job's completions)")
            return _checked(number(index_name), number(COUNT_VARIABLE), f"--shard auto ({index_name})")
    raise ClipSegError("--shard auto: no array task in the environment (SLURM_ARRAY_TASK_ID, JOB_COMPLETION_INDEX "
                       f"or {INDEX_VARIABLE}, each with a count); run it in a job array or give --shard K/N")


def _checked(index: int, count: int, what: str) -> Shard:
    if count < 1:
        raise ClipSegError(f"{what}: the number of shards is {count}; it must be at least 1")
    if count > MAX_SHARDS:
        raise ClipSegError(f"{what}: the number of shards is {count}; it must be at most {MAX_SHARDS}")
    if not 0 <= index < count:
        raise ClipSegError(f"{what}: shard {index} does not exist; with {count} shards K runs from 0 to {count - 1}")
    return Shard(index, count)


def item_key(item: WorkItem, output_dir: Path) -> str:
    """An input's path relative to its input root, read from where its outputs go (which mirrors it).

    Returns:
        A posix path such as ``sub/photo.jpg``.
    """
    folder = os.path.relpath(item.output_dir, output_dir)
    return item.source.name if folder == "." else Path(folder, item.source.name).as_posix()


def select(items: Iterable[WorkItem], shard: Shard, output_dir: Path) -> list[WorkItem]:
    """Returns: the items of ``shard``, in input order."""
    return [item for item in items if shard.holds(item_key(item, output_dir))]


def run_key(items: Iterable[WorkItem], shard: Shard, request: Mapping[str, object], listing: str) -> str:
    """What made a shard's outputs: its inputs (path, output name and the sha256 of the content, the rule of
    plain reruns), the shard, the listing it named from and the request (prompts, settings, weights).

    Returns:
        64 hex characters.
    """
    from clipseg_cli.fingerprint import file_sha256

    digest = hashlib.sha256(json.dumps({"shard": str(shard), "request": request, "listing": listing},
                                       sort_keys=True, default=str).encode())
    for item in items:
        try:
            stamp = file_sha256(item.source) if item.source.is_file() else "not a file"
        except OSError:
            stamp = "unreadable"
        digest.update(os.fsencode(f"{item.source}\0{item.output_dir}\0{item.stem}\0{stamp}\n"))
    return digest.hexdigest()


def listing_of(items: Iterable[WorkItem], output_dir: Path) -> str:
    """The whole run's inputs and the output names they got (a name depends on its neighbours: x.jpg and
    x.png become x_jpg and x_png), as every shard saw them.

    Returns:
        24 hex characters.
    """
    digest = hashlib.sha256()
    for item in items:
        digest.update(os.fsencode(f"{item_key(item, output_dir)}\0{item.stem}\n"))
    return digest.hexdigest()[:24]


def marker_path(output_dir: Path, shard: Shard) -> Path:
    return output_dir / SHARD_FOLDER / f"{shard.name}.done"


def manifest_path(output_dir: Path, shard: Shard) -> Path:
    return output_dir / SHARD_FOLDER / f"{shard.name}.jsonl"


def read_marker(output_dir: Path, shard: Shard) -> dict | None:
    """The shard's done marker, the one reader of it (``batch`` and ``clipseg shards``).

    Returns:
        The marker, or None when it is missing, empty or not one of ours (not done).
    """
    try:
        marker = json.loads(marker_path(output_dir, shard).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or not isinstance(marker.get("key"), str):
        return None
    return marker


def forget(output_dir: Path, shard: Shard) -> None:
    """Remove the shard's done marker before it runs again (another key, or --force)."""
    marker_path(output_dir, shard).unlink(missing_ok=True)


def record(output_dir: Path, shard: Shard, key: str, listing: dict[str, object], lines: list[str],
           done: bool) -> None:
    """Write the shard's manifest (its JSON lines) and, when ``done``, its marker; each atomically."""
    from clipseg_cli.imaging.writing import atomic_write

    folder = output_dir / SHARD_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(manifest_path(output_dir, shard), lambda stream: stream.write("".join(lines).encode("utf-8")))
    if done:
        marker = json.dumps({"key": key, "shard": str(shard), "results": len(lines), **listing}) + "\n"
        atomic_write(marker_path(output_dir, shard), lambda stream: stream.write(marker.encode("utf-8")))


def check_count(count: int) -> None:
    """Refuse a shard count that is not 1 to `MAX_SHARDS` (one line)."""
    if not 1 <= count <= MAX_SHARDS:
        raise ClipSegError(f"--count {count}: the number of shards must be 1 to {MAX_SHARDS}")


def missing_shards(output_dir: Path, count: int) -> list[int]:
    """Returns: the indices of the shards of ``count`` that are not done (`read_marker`)."""
    check_count(count)
    return [index for index in range(count) if read_marker(output_dir, Shard(index, count)) is None]


def other_listings(output_dir: Path, count: int, listing: str | None = None) -> str | None:
    """Whether done shards of ``count`` named their outputs from different inputs (from each other, or from
    ``listing``, the inputs of this run).

    Returns:
        None, or one line saying which shards saw which number of inputs.
    """
    seen: dict[str, list[int]] = {}
    inputs: dict[str, object] = {}
    for index in range(count):
        marker = read_marker(output_dir, Shard(index, count))
        if marker is not None and isinstance(marker.get("listing"), str):
            seen.setdefault(marker["listing"], []).append(index)
            inputs[marker["listing"]] = marker.get("inputs", "?")
    others = {name: shards for name, shards in seen.items() if name != listing}
    if not others or (listing is None and len(others) == 1):
        return None
    parts = "; ".join(f"shard(s) {' '.join(map(str, shards))} from {inputs[name]} input(s)"
                      for name, shards in others.items())
    now = "" if listing is None else ", not the inputs there are now"
    return (f"the shards of {count} named their outputs from different inputs ({parts}{now}); rerun those "
            f"shards so that the names are the ones a plain run gives")


def read_lines(output_dir: Path, shard: Shard) -> list[str]:
    """Returns: the shard's stored JSON lines (its manifest), or none when it cannot be read."""
    try:
        return manifest_path(output_dir, shard).read_text(encoding="utf-8").splitlines(keepends=True)
    except (OSError, ValueError):
        return []
