"""A labelling run in its one order: check the set-up, name the images, decide what is up to date, then
(only when an image is to be labelled) load the model, label, and write the dataset's index files.

    from clipseg_cli.run.job import Job
    from clipseg_cli.label import LabelJob, parse_classes, label

    run = LabelJob(tuple(parse_classes(["car=red car,automobile", "tree"])), Job(), format="coco")
    for outcome in label("CIDAS/clipseg-rd64-refined", ["photos/"], "dataset/", run):
        print(outcome.image, outcome.status, outcome.instances)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePath
from typing import TYPE_CHECKING

from clipseg_cli.errors import ClipSegError
from clipseg_cli.fingerprint import file_sha256, make_record
from clipseg_cli.label.classes import LabelClass, Splits, classes_key
from clipseg_cli.label.formats import format_module
from clipseg_cli.label.instances import instances
from clipseg_cli.label.labeller import Maps, SharedLogits, pipeline
from clipseg_cli.label.media import store_image
from clipseg_cli.label.store import Entry, LabelledImage, open_dataset, read_record, write_record
from clipseg_cli.predictor import ModelSpec, Segmenter
from clipseg_cli.run.inputs import WorkItem, collect, output_stems
from clipseg_cli.run.job import Job
from clipseg_cli.run.targets import decode_min_side, recorded_settings
from clipseg_cli.scale.sharding import Shard, item_key

if TYPE_CHECKING:
    from clipseg_cli.imaging.decode import DecodedImage

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class LabelJob:
    """What a labelling run makes, whatever the images.

    classes: the dataset's classes (`parse_classes`).
    job: the mask steps, negatives, templates, refinement, batch size and pixel bound of ``clipseg batch``
        (its texts and union are set per class).
    format: coco, yolo, voc or labelstudio.
    semantic: one region per class per image, instead of one per connected component.
    splits: the fractions of train, val and test.
    link: link the images instead of copying them.
    force: label again images whose records are up to date.
    preview: write a contact sheet of this many labelled images (0: none).
    """

    classes: tuple[LabelClass, ...]
    job: Job = field(default_factory=Job)
    format: str = "coco"
    semantic: bool = False
    splits: Splits = field(default_factory=lambda: Splits(("train",), (1.0,)))
    link: bool = False
    force: bool = False
    preview: int = 0

    def class_jobs(self) -> list[Job]:
        """Returns: one Job per class: its prompts, their union where several, statistics on (the maps give scores)."""
        pipeline = replace(self.job.pipeline, stats=True)
        return [replace(self.job, texts=c.prompts, union=len(c.prompts) > 1, pipeline=pipeline) for c in self.classes]


@dataclass
class Outcome:
    """What happened to one image: ok (labelled), skipped (its record is up to date) or failed."""

    image: str
    status: str
    entry: Entry | None = None
    error: str | None = None
    instances: int = 0


@dataclass(frozen=True)
class _Task:
    item: WorkItem
    entry: Entry
    content: str  # the sha256 of the image's bytes (its fingerprint is made again when it is written)


def name_entries(items: Sequence[WorkItem], root: Path) -> list[tuple[str, str]]:
    """(key, file name in the dataset) per item: the path under its input root, folders joined by ``__``,
    stems made unique as ``clipseg batch`` makes them (photo.jpg and photo.png: photo_jpg, photo_png).

    Returns:
        One pair per item, in item order.
    """
    keys = [item_key(item, root) for item in items]
    flat = [PurePath(key.replace("/", "__")) for key in keys]
    stems = output_stems([(name, PurePath(".")) for name in flat])
    return [(key, stem + name.suffix) for key, name, stem in zip(keys, flat, stems, strict=True)]


def label(model: ModelSpec | Segmenter | str, inputs: Iterable[PathLike], dataset: PathLike, run: LabelJob, *,
          recursive: bool = False, shard: Shard | None = None, progress: bool = False) -> Iterator[Outcome]:
    """Label image files and folders into a dataset folder (`Labelling`); the index files are written
    once every image is done (not by a shard: `merge` writes them).

    Returns:
        An iterator of one Outcome per image of the run (or of the shard).
    """
    model = ModelSpec(model) if isinstance(model, (str, os.PathLike)) else model
    root = Path(dataset)
    items = collect([os.fspath(path) for path in inputs], output_dir=root, recursive=recursive)
    labelling = Labelling(run, root)
    return labelling.run(model, items, shard=shard, progress=progress)


class Labelling:
    """One run's set-up: the dataset folder, its format and classes, the per-class Jobs."""

    def __init__(self, run: LabelJob, root: Path) -> None:
        self.run_job, self.root = run, root
        self.format = format_module(run.format)
        self.jobs = run.class_jobs()
        self._settings: dict = {}  # the run's model and settings, once `run` has found them

    def check(self) -> None:
        """Refuse, before any model loads, bad prompts and a folder that holds another dataset.

        Raises:
            ClipSegError: naming the problem.
        """
        if self.run_job.job.prompt_images:
            raise ClipSegError("label takes text classes (-p); --prompt-image is for segment and batch")
        for job in self.jobs:
            job.check()
        open_dataset(self.root, self.run_job.format, [c.name for c in self.run_job.classes], self.run_job.semantic)

    def run(self, model: ModelSpec | Segmenter, items: Sequence[WorkItem], *, shard: Shard | None = None,
            progress: bool = False) -> Iterator[Outcome]:
        """Check now; then, as the outcomes are taken: decide, label, and write the index files (a shard
        writes its manifest instead).

        Returns:
            An iterator of one Outcome per image: the skipped ones first, then the others as each is written.
        """
        self.check()
        keys = [(job.targets().targets[0].key) for job in self.jobs]
        return self._outcomes(model, items, keys, shard, progress)

    def _outcomes(self, model: ModelSpec | Segmenter, items: Sequence[WorkItem], keys: list[str],
                  shard: Shard | None, progress: bool) -> Iterator[Outcome]:
        from clipseg_cli.label.index_files import finish, write_manifest

        settings = self._settings = self.settings(model, keys, progress)
        named = name_entries(items, self.root)
        chosen = [i for i, (key, _) in enumerate(named) if shard is None or shard.holds(key)]
        done: list[Entry] = []
        tasks, failures = [], 0
        for index in chosen:
            decided = self.decide(items[index], *named[index], settings)
            if isinstance(decided, Outcome):
                done += [decided.entry] if decided.entry else []
                failures += decided.status == "failed"
                yield decided
            else:
                tasks.append(decided)
        for outcome in self._label(model, tasks, progress):
            done += [outcome.entry] if outcome.status == "ok" else []
            failures += outcome.status == "failed"
            yield outcome
        setup = setup_digest(settings)
        if shard is None:
            finish(self.root, self.run_job.classes, self.format, self.run_job.splits, done, self.run_job.preview)
        else:
            write_manifest(self.root, shard, setup, self.run_job.splits, done, failures)

    def settings(self, model: ModelSpec | Segmenter, keys: list[str], progress: bool) -> dict:
        """Everything that makes an image's labels besides the image: model, classes, mask steps, format.

        Returns:
            The model's identity and the settings, as the records' fingerprints store them.
        """
        if isinstance(model, ModelSpec):
            identity, fp32, input_size = model.expected_identity(progress=progress)
        else:
            identity, fp32, input_size = model.identity, model.is_fp32, model.preprocessing.size
        base = self.run_job.job
        refine = base.refine if base.refine != "none" else None
        recorded = recorded_settings(base.plan, decode_min_side(base.plan, fp32, refine is not None, input_size),
                                     refine)
        batch = base.pipeline.batch_size or (4 if identity["device"] == "cpu" else 16)  # as the Engine chooses it
        return {"identity": identity, "prompt": "\n".join(keys), "classes": classes_key(self.run_job.classes),
                "settings": {**recorded, "format": self.run_job.format, "semantic": self.run_job.semantic,
                             "split": str(self.run_job.splits), "link": self.run_job.link, "batch": batch}}

    def decide(self, item: WorkItem, key: str, name: str, settings: dict) -> _Task | Outcome:
        """Returns: a task to label the item, or its Outcome when its record is up to date (or it cannot be read)."""
        try:
            digest = file_sha256(item.source)
        except OSError as exc:
            return Outcome(str(item.source), "failed", error=f"{item.source}: cannot read ({exc.strerror or exc})")
        entry = Entry(key, name, self.run_job.splits.of(digest))
        found = None if self.run_job.force else read_record(self.root, name)
        if found is not None and found.get("fingerprint", {}).get("digest") == fingerprint(entry, digest, settings)[
                "digest"] and all(os.path.lexists(self.root / relative) for relative in found.get("files", [])):
            return Outcome(str(item.source), "skipped", entry, instances=len(found.get("instances", [])))
        return _Task(item, entry, digest)

    def _label(self, model: ModelSpec | Segmenter, tasks: list[_Task], progress: bool) -> Iterator[Outcome]:
        """Load the model (only when there is work) and label the tasks."""
        if not tasks:
            return
        owned = isinstance(model, ModelSpec)
        segmenter = model.load(progress=progress) if owned else model
        base = self.run_job.job
        refiner = base.refiner(segmenter, offline=model.offline if owned else None, progress=progress)
        shared = SharedLogits(segmenter)
        engines = [job.engine(shared, refiner=refiner) for job in self.jobs]
        shared.use(engines)
        segmenter.embed(shared.prompts)
        if owned:
            segmenter.drop_unused_layers()
        yield from pipeline(engines, shared, tasks, lambda task: task.item.source, self._write, _failed)

    def _write(self, task: _Task, decoded: DecodedImage, maps: Maps) -> Outcome:
        """Write one image's files, then its record (in a worker thread)."""
        try:
            found = [region for number, (mask, soft) in enumerate(maps)
                     for region in instances(number, mask, soft, semantic=self.run_job.semantic)]
            labelled = LabelledImage(task.entry, decoded.size, found, [m for m, _ in maps], [s for _, s in maps])
            image = store_image(self.root, self.format.image_path(task.entry), task.item.source,
                                link=self.run_job.link)
            files, extra = self.format.write_image(self.root, labelled, self.run_job.classes)
            record = {"key": task.entry.key, "name": task.entry.name, "split": task.entry.split,
                      "width": decoded.size[0], "height": decoded.size[1], "files": [image, *files],
                      "instances": [region.to_record() for region in found], **extra,
                      "fingerprint": fingerprint(task.entry, task.content, self._settings)}
            write_record(self.root, task.entry.name, record)
            return Outcome(str(task.item.source), "ok", task.entry, instances=len(found))
        except OSError as exc:
            return _failed(task, ClipSegError(f"cannot write {exc.filename or self.root}: {exc.strerror or exc}"))
        except Exception as exc:  # one bad image never stops the run
            return _failed(task, exc)


def fingerprint(entry: Entry, content: str, settings: dict) -> dict:
    """Returns: what made an image's labels (`make_record`): its bytes' sha256, the model, the classes, every
    setting, its name and split; the record stores it, a rerun compares its digest."""
    return json.loads(make_record("label", input_sha256=content, prompt=settings["prompt"],
                                  prompt_text=settings["classes"], model=settings["identity"],
                                  settings={**settings["settings"], "name": entry.name, "in": entry.split}))


def _failed(task: _Task, exc: Exception) -> Outcome:
    error = str(exc) if isinstance(exc, ClipSegError) else f"{task.item.source}: {type(exc).__name__}: {exc}"
    return Outcome(str(task.item.source), "failed", error=" ".join(error.split()))


def setup_digest(settings: dict) -> str:
    """Returns: 32 hex characters that shards of one run share (model, classes, settings)."""
    text = json.dumps(settings, sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]
