"""The end of a run: the index files from the images' records (streamed, in name order), and for a run
spread over machines with ``--shard K/N``, each shard's manifest and the merge of the shards into the bytes
one machine writes."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from clipseg_cli.errors import ClipSegError
from clipseg_cli.label.classes import LabelClass, Splits
from clipseg_cli.label.media import copy_file, link_file
from clipseg_cli.label.store import (
    SHARDS,
    STORE,
    Entry,
    json_text,
    prune,
    read_marker,
    read_record,
    record_path,
    write_file,
)
from clipseg_cli.scale.sharding import Shard


def finish(root: Path, classes: Sequence[LabelClass], fmt: ModuleType, splits: Splits, entries: Sequence[Entry],
           preview: int = 0) -> list[str]:
    """Write the format's index files for these images (every split has its files, empty or not) and the
    preview of the first ``preview`` images; the records and files of images no longer given are removed.

    Returns:
        The files written, relative to the dataset.
    """
    prune(root, [entry.name for entry in entries])
    by_split: dict[str, list[Entry]] = {name: [] for name in splits.names}
    for entry in sorted(entries, key=lambda entry: entry.name):
        by_split.setdefault(entry.split, []).append(entry)

    def record(entry: Entry) -> dict:
        found = read_record(root, entry.name)
        if found is None:
            raise ClipSegError(f"{record_path(root, entry.name)}: the record of {entry.key} is missing or damaged; "
                               "rerun the labelling")
        return found

    written = fmt.finish(root, classes, by_split, record)
    from clipseg_cli.label.preview import PREVIEW_FILE, write_preview

    if preview:
        chosen = [entry for name in by_split for entry in by_split[name]][:preview]
        written.append(write_preview(root, classes, fmt, chosen, record))
    elif (root / PREVIEW_FILE).is_file():  # one of an earlier run would show other images
        (root / PREVIEW_FILE).unlink()
    return written


def manifest_name(shard: Shard) -> str:
    return f"{STORE}/{SHARDS}/{shard.name}.json"


def write_manifest(root: Path, shard: Shard, setup: str, splits: Splits, entries: Sequence[Entry],
                   failures: int) -> str:
    """Write what one shard labelled: its images (key, name, split), its set-up's digest and its failures.

    Returns:
        The manifest's path, relative to the dataset.
    """
    manifest = {"shard": str(shard), "setup": setup, "split": str(splits), "failed": failures,
                "entries": [[entry.key, entry.name, entry.split] for entry in sorted(entries, key=lambda e: e.name)]}
    return write_file(root, manifest_name(shard), (json_text(manifest) + "\n").encode())


def merge(parts: Sequence[Path], root: Path, preview: int = 0) -> tuple[int, int]:
    """Gather the shards of one run (in ``parts``: dataset folders, ``root`` itself among them or not) into
    ``root`` and write its index files: the bytes one machine writes.

    Returns:
        (images in the dataset, images that failed in the shards).

    Raises:
        ClipSegError: a missing shard, shards of different runs or datasets, a folder that is not a dataset.
    """
    from clipseg_cli.label.formats import format_module

    markers = {json_text(read_marker(part)) for part in parts}
    if len(markers) != 1:
        raise ClipSegError("the folders hold different datasets (format, classes or --semantic differ)")
    marker = json.loads(markers.pop())
    manifests = {}
    for part in parts:
        for path in sorted((part / STORE / SHARDS).glob("shard-*-of-*.json")):
            manifests.setdefault(path.name, (part, json.loads(path.read_text(encoding="utf-8"))))
    if not manifests:
        raise ClipSegError(f"no shard manifests in {' '.join(map(str, parts))}: run label --shard K/N first")
    counts = {int(name.rsplit("-of-", 1)[1].removesuffix(".json")) for name in manifests}
    if len(counts) != 1:
        raise ClipSegError(f"the manifests are of runs with different shard counts ({sorted(counts)})")
    count = counts.pop()
    missing = [str(k) for k in range(count) if f"shard-{k}-of-{count}.json" not in manifests]
    if missing:
        raise ClipSegError(f"{len(missing)} of {count} shard(s) not done: {' '.join(missing)}; "
                           f"run them with --shard K/{count}")
    if len({found["setup"] for _, found in manifests.values()}) != 1:
        raise ClipSegError("the shards were labelled with different models, classes or settings; rerun them alike")
    from clipseg_cli.label.classes import parse_splits

    splits = parse_splits(next(iter(manifests.values()))[1]["split"])
    _copy_in(root, parts, marker, manifests)
    entries = [Entry(*fields) for _, found in manifests.values() for fields in found["entries"]]
    classes = [LabelClass(name, ()) for name in marker["classes"]]
    finish(root, classes, format_module(marker["format"]), splits, entries, preview)
    return len(entries), sum(found["failed"] for _, found in manifests.values())


def _copy_in(root: Path, parts: Sequence[Path], marker: dict, manifests: dict) -> None:
    """Copy each shard's records, files and manifest into ``root`` (nothing to do for a part that is ``root``)."""
    if not (root / STORE).is_dir():
        write_file(root, f"{STORE}/dataset.json", (json_text(marker) + "\n").encode())
    for manifest, (part, found) in manifests.items():
        if part.resolve() == root.resolve():
            continue
        for key, name, _ in found["entries"]:
            record = read_record(part, name)
            if record is None:
                raise ClipSegError(f"{part}: the record of {key} is missing; rerun its shard")
            for relative in record["files"]:
                source = part / relative
                _copy(source, root, relative)
            source = record_path(part, name)
            write_file(root, source.relative_to(part).as_posix(), source.read_bytes())
        write_file(root, f"{STORE}/{SHARDS}/{manifest}", (part / STORE / SHARDS / manifest).read_bytes())


def _copy(source: Path, root: Path, relative: str) -> None:
    """Copy a file of a shard into the dataset; a link (``--link``) stays a link to the same image."""
    if source.is_symlink():
        link_file(root, relative, os.readlink(source))
    else:
        copy_file(root, relative, source)
