"""Ray Data: segment the images of a Dataset, with the masks, names and PNG records of ``clipseg batch``.

    import ray
    from clipseg_cli.run.job import Job
    from clipseg_cli.scale.ray_data import read_image_files, segment, write_masks

    images = read_image_files("s3://bucket/photos")                      # path, bytes, folder, stem
    masks = segment(images, "CIDAS/clipseg-rd64-refined", Job(["car", "tree"]), batch_size=16,
                    concurrency=4, num_gpus=1)                       # one row per (image, prompt)
    written = write_masks(masks, "s3://bucket/masks")                # one record per row, no bytes

`SegmentBatch` is the callable class behind `segment`, for ``Dataset.map_batches`` in your own
pipelines: it holds one Segmenter (in our Engine) per actor. Rows of ``ray.data.read_images`` (an
``image`` column) are segmented in memory, with the Engine's mask maths: masks (HxW uint8) and maps
(HxW float32) as numpy columns, or the masks as PNG bytes with ``encode="png"``:

    masks = segment(ray.data.read_images("s3://bucket/photos", mode="RGB", include_paths=True),
                    "CIDAS/clipseg-rd64-refined", Job(["car"]))         # path, prompt, mask, soft, ...

Rows with ``path`` and optionally ``bytes`` (as `read_image_files` gives) give the output files as PNG
bytes, for `write_masks`: each batch runs the Engine that ``clipseg batch`` runs, writing into a
temporary folder that is read back, so every file is byte for byte what ``clipseg batch`` writes for
the same image, prompts and settings, fingerprint included.
"""

from __future__ import annotations

import posixpath
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np

from clipseg_cli.constants import OUTPUT_KINDS
from clipseg_cli.errors import ClipSegError
from clipseg_cli.run.inputs import IMAGE_EXTENSIONS, WorkItem, is_own_output, output_stems
from clipseg_cli.scale.ray_start import start_or_join

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

    from clipseg_cli.run.job import Job

RECORD_COLUMNS = ("path", "prompt", "status", "error", "coverage", "bbox", "mean_probability",
                  *(f"{kind}_name" for kind in OUTPUT_KINDS))


def _schema(with_bytes: bool) -> pa.Schema:
    import pyarrow as pa

    types = {"path": pa.string(), "prompt": pa.string(), "status": pa.string(), "error": pa.string(),
             "coverage": pa.float64(), "bbox": pa.list_(pa.int64()), "mean_probability": pa.float64()}
    fields = [pa.field(name, types.get(name, pa.string())) for name in RECORD_COLUMNS]
    return pa.schema(fields + ([pa.field(kind, pa.binary()) for kind in OUTPUT_KINDS] if with_bytes else []))


class SegmentBatch:
    """For ``Dataset.map_batches``: one Engine (a Segmenter and the output rules) per actor.

    Input rows: ``path`` (a name: its base name names the outputs), optionally ``bytes`` (the file;
    without it ``path`` is read as a local path), ``folder`` (the outputs' folder, relative; default
    "") and ``stem`` (the outputs' name prefix; default the file's stem). Output rows, one per
    (image, prompt): the `RECORD_COLUMNS` (``mask_name`` etc.: relative output paths, ``folder/stem.
    label.mask.png``) and ``mask``, ``overlay``, ``cutout``: PNG bytes (null when not written).
    """

    def __init__(self, weights: str | Path, job: Job, *, device: str = "auto", precision: str = "auto",
                 offline: bool | None = None, revision: str | None = None, encode: str | None = None) -> None:
        """Arguments:
        weights, device, precision, offline, revision: as `Segmenter.from_pretrained` takes them.
        job: the prompts, output plan and mask steps (`clipseg_cli.run.job.Job`, what the CLI's options make).
        encode: for rows with an ``image`` column: None gives the masks and maps as numpy arrays, ``png``
            the masks as PNG bytes (those of ``clipseg batch``'s files without their fingerprint).
        """
        from clipseg_cli.predictor import ModelSpec

        if encode not in (None, "png"):
            raise ClipSegError(f"encode={encode!r}: choose None (numpy arrays) or 'png'")
        self.encode = encode
        segmenter = ModelSpec(weights, device, precision, offline, revision).load(progress=False)
        self.engine = job.engine(segmenter, drop_unused_layers=True)

    def __call__(self, batch: dict) -> pa.Table | dict:
        """Segment a batch of images (a dict of columns, Ray Data's default batch format).

        Returns:
            One row per (image, prompt), images in batch order, prompts in given order: for ``image`` rows
            (see `in_memory`), else a table of the files' bytes and records.
        """
        import pyarrow as pa

        if "image" in batch:
            return self.in_memory(batch)

        paths = [str(path) for path in batch["path"]]
        data = batch.get("bytes")
        folders = [str(f) for f in batch["folder"]] if "folder" in batch else [""] * len(paths)
        stems = [str(s) for s in batch["stem"]] if "stem" in batch else [None] * len(paths)
        targets = len(self.engine.targets)
        rows: list[dict] = []
        with tempfile.TemporaryDirectory(prefix="clipseg-ray-") as tmp:
            items = []
            for index, path in enumerate(paths):
                name = posixpath.basename(path.rstrip("/")) or "image"
                source = Path(path)
                if data is not None:  # in its own folder under its own name: decoded as the file would be
                    source = Path(tmp, "in", str(index), name)
                    source.parent.mkdir(parents=True)
                    source.write_bytes(data[index])
                items.append(WorkItem(source, Path(tmp, "out", str(index)), stems[index] or Path(name).stem))
            results = list(self.engine.process(items))
            for index, (path, item) in enumerate(zip(paths, items, strict=True)):
                for result in results[index * targets : (index + 1) * targets]:
                    rows.append(_row(result, path, str(item.source), folders[index]))
        return pa.Table.from_pylist(rows, schema=_schema(with_bytes=True))


    def in_memory(self, batch: dict) -> dict:
        """Segment the rows of ``ray.data.read_images`` (an ``image`` column of HxWxC uint8 arrays, optionally
        ``path``) in memory: nothing is read or written.

        Returns:
            Columns ``path`` (when given), ``prompt``, ``status``, ``error``, ``coverage``, ``bbox``,
            ``mean_probability``, ``mask`` (HxW uint8, 255 inside; PNG bytes with ``encode="png"``) and
            ``soft`` (HxW float32 map, None where nothing needed it).
        """
        from clipseg_cli.imaging.decode import open_image
        from clipseg_cli.imaging.writing import mask_png
        from clipseg_cli.postprocess import stats

        engine = self.engine
        paths = [str(path) for path in batch["path"]] if "path" in batch else [None] * len(batch["image"])
        decoded, errors = [], {}
        for index, image in enumerate(batch["image"]):
            try:
                decoded.append(open_image(np.asarray(image), max_pixels=engine.max_pixels))
            except Exception as exc:  # one bad image never stops the batch
                errors[index] = str(exc)
        maps = iter(engine.maps(decoded))
        rows: list[dict] = []
        for index, path in enumerate(paths):
            found = None if index in errors else next(maps)
            for number, target in enumerate(engine.targets.targets):
                row = {"path": path, "prompt": target.prompt, "status": "failed", "error": errors.get(index),
                       "coverage": None, "bbox": None, "mean_probability": None, "mask": None, "soft": None}
                if found is not None:
                    mask, soft = found[number]
                    row.update(status="ok", soft=soft, **(stats(mask, soft) if soft is not None else {}),
                               mask=mask_png(mask) if self.encode else mask.astype(np.uint8) * np.uint8(255))
                rows.append(row)
        columns = {key: _column([row[key] for row in rows]) for key in (rows[0] if rows else {})}
        if "path" not in batch:
            columns.pop("path", None)
        return columns


def _column(values: list) -> np.ndarray:
    """Returns: a numpy column of any values (arrays of different shapes included), as Ray Data takes it."""
    column = np.empty(len(values), dtype=object)
    for index, value in enumerate(values):  # one by one: arrays of one shape would be broadcast
        column[index] = value
    return column


def _row(result, path: str, source: str, folder: str) -> dict:
    """One output row: the result's record under the row's own names, and its files' bytes."""
    row = {"path": path, "prompt": result.prompt, "status": result.status,
           "error": result.error.replace(source, path) if result.error else None, **result.stats}
    for kind in OUTPUT_KINDS:
        written = getattr(result, kind)
        row[f"{kind}_name"] = posixpath.join(folder, Path(written).name) if written else None
        row[kind] = Path(written).read_bytes() if written and result.status == "ok" else None
    return row


def segment(dataset: ray.data.Dataset, weights: str | Path, job: Job, *, batch_size: int = 16,
            concurrency: int = 1, num_gpus: float = 0, num_cpus: float = 1, **model) -> ray.data.Dataset:
    """``dataset.map_batches(SegmentBatch, ...)``: `concurrency` actors, each with `num_gpus` GPUs and
    `num_cpus` CPUs, each holding one model; `model` (device, precision, encode, ...) goes to `SegmentBatch`.

    Returns:
        The lazy dataset of output rows (see `SegmentBatch`).
    """
    return dataset.map_batches(SegmentBatch, fn_constructor_kwargs={"weights": weights, "job": job, **model},
                               batch_size=batch_size, concurrency=concurrency, num_gpus=num_gpus, num_cpus=num_cpus)


def read_image_files(paths: str | Sequence[str], *, recursive: bool = True, filesystem=None,
                **read_args) -> ray.data.Dataset:
    """Image files under folders (or named files) on any file system Ray Data reads (local, s3://, gs://, ...),
    with the output names ``clipseg batch`` gives them: the same files, folders and stems.

    Files are chosen as `clipseg_cli.run.inputs.walk` chooses them (image extensions, no hidden files or
    folders, not our own outputs). `read_args` go to ``ray.data.read_binary_files``. Without a running Ray,
    a local one is started as ``clipseg batch --ray`` starts it, on loopback only (Ray Data's own start would
    listen on every interface), or ``RAY_ADDRESS``'s cluster is joined (`clipseg_cli.scale.ray_start`).

    Returns:
        A dataset with columns path, bytes, folder (relative output folder) and stem.
    """
    import ray
    import ray.data

    if not ray.is_initialized():
        start_or_join(None)
    paths = [paths] if isinstance(paths, str) else list(paths)
    entries: list[tuple[str, PurePosixPath, PurePosixPath]] = []  # (path, relative path, output folder)
    for root in paths:
        fs, root_path = _resolve(root, filesystem)
        filesystem = fs
        entries += _listing(fs, root_path, recursive)
    if not entries:
        raise ClipSegError(f"no images to process in {' '.join(paths)}")
    stems = output_stems([(relative, folder) for _, relative, folder in entries])
    names = {path: (folder.as_posix() if folder.parts else "", stem)
             for (path, _, folder), stem in zip(entries, stems, strict=True)}
    dataset = ray.data.read_binary_files([path for path, _, _ in entries], filesystem=filesystem,
                                         include_paths=True, **read_args)
    return dataset.map_batches(_add_names, fn_kwargs={"names": names}, batch_format="pyarrow")


def _add_names(table: pa.Table, names: dict[str, tuple[str, str]]) -> pa.Table:
    found = [names[str(path)] for path in table.column("path").to_pylist()]
    table = table.append_column("folder", _strings([folder for folder, _ in found]))
    return table.append_column("stem", _strings([stem for _, stem in found]))


def _strings(values: list[str]) -> pa.Array:
    import pyarrow as pa

    return pa.array(values, type=pa.string())


def _resolve(path: str, filesystem):
    """Returns: (pyarrow file system, path on it) for a local path or a URI."""
    import pyarrow.fs

    if filesystem is not None:
        return filesystem, path
    if "://" in path:
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), str(Path(path).absolute())


def _listing(fs, root: str, recursive: bool) -> list[tuple[str, PurePosixPath, PurePosixPath]]:
    """(path, relative path, output folder) of the images under ``root``, in `inputs.walk`'s order."""
    import pyarrow.fs

    info = fs.get_file_info(root)
    if info.type == pyarrow.fs.FileType.File:
        return [(root, PurePosixPath(posixpath.basename(root)), PurePosixPath())]
    if info.type != pyarrow.fs.FileType.Directory:
        raise ClipSegError(f"{root}: no such file or folder")
    found = []
    for entry in fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=recursive)):
        relative = PurePosixPath(entry.path[len(root.rstrip("/")) :].lstrip("/"))
        if (entry.type == pyarrow.fs.FileType.File and not any(part.startswith(".") for part in relative.parts)
                and relative.suffix.lower() in IMAGE_EXTENSIONS and not is_own_output(Path(relative.name))):
            found.append((entry.path, relative, relative.parent))
    return sorted(found, key=lambda entry: (entry[1].parent.parts, entry[1].name))  # os.walk's order, sorted


def write_masks(dataset: ray.data.Dataset, output_dir: str, *, filesystem=None) -> ray.data.Dataset:
    """Write the files of `segment`'s rows under ``output_dir`` (a local folder or a URI), each file
    whole: locally through a temporary file and a rename, on object stores as one upload.

    Returns:
        The materialized dataset of records (`RECORD_COLUMNS`, no bytes): filter ``status`` for failures.
    """
    fs, root = _resolve(output_dir, filesystem)
    return dataset.map_batches(_write, fn_kwargs={"fs": fs, "root": root}, batch_format="pyarrow").materialize()


def _write(table: pa.Table, fs, root: str) -> pa.Table:
    import pyarrow.fs

    from clipseg_cli.imaging.writing import atomic_write

    local = isinstance(fs, pyarrow.fs.LocalFileSystem)
    for row in table.to_pylist():
        for kind in OUTPUT_KINDS:
            data, name = row[kind], row[f"{kind}_name"]
            if data is None:
                continue
            target = posixpath.join(root, name)
            if local:
                Path(target).parent.mkdir(parents=True, exist_ok=True)
                atomic_write(Path(target), lambda stream, data=data: stream.write(data))
            else:
                fs.create_dir(posixpath.dirname(target), recursive=True)
                with fs.open_output_stream(target) as stream:
                    stream.write(data)
    return table.select(list(RECORD_COLUMNS))
