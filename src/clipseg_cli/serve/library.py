"""The server's one call into the library that ``clipseg segment`` uses: the same Job, Engine and writers.

Each upload is written to its own private folder, segmented there exactly as ``clipseg segment``
would segment it (same mask steps, same PNG writer, same fingerprint in the file), and read back:
the bytes a client receives are the bytes the CLI writes. Nothing here knows about HTTP.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from clipseg_cli.constants import DEFAULT_MAX_PIXELS, DEFAULT_THRESHOLD
from clipseg_cli.postprocess import PostProcess
from clipseg_cli.predictor import ModelSpec, Segmenter
from clipseg_cli.refine import Refiner, check_available, load_refiner
from clipseg_cli.run.engine import Pipeline, Result
from clipseg_cli.run.inputs import WorkItem
from clipseg_cli.run.job import Job
from clipseg_cli.run.outputs import OutputPlan

UPLOAD_STEM = "upload"  # every output is named upload.<label>.<kind>.png in the upload's own folder
EMBEDDING_LIMIT = 4096  # prompts whose embeddings are kept (oldest forgotten first)


@dataclass(frozen=True)
class Loaded:
    """What ``clipseg serve`` loads once: the segmenter and the refiner of ``--refine`` (or None)."""

    segmenter: Segmenter
    refiner: Refiner | None = None


def load(model: ModelSpec, refine: str = "none") -> Loaded:
    """Load the model (and the refiner) once, with the CLI's checks and one-line errors.

    Arguments:
        model: the checkpoint and how to run it (``--weights``, ``--device``, ``--precision``).
        refine: the refiner requests may ask for (``--refine``).

    Returns:
        What the server runs every request on.
    """
    check_available(refine)
    segmenter = model.load()
    return Loaded(segmenter, load_refiner(refine, device=segmenter.device_type))


@dataclass(frozen=True)
class Options:
    """One request's options, named and defaulted as the CLI's (``--threshold``, ``--negative``, ...)."""

    prompts: tuple[str, ...]
    negatives: tuple[str, ...] = ()
    templates: tuple[str, ...] = ()
    union: bool = False
    threshold: float = DEFAULT_THRESHOLD
    blur: float = 0.0
    dilate: int = 0
    erode: int = 0
    min_area: int = 0
    invert: bool = False
    soft: bool = False
    overlay: bool = False
    cutout: bool = False
    refine: str = "none"

    def job(self, max_pixels: int = DEFAULT_MAX_PIXELS, batch_size: int | None = None) -> Job:
        """Returns: the library Job these options ask for (as `clipseg_cli.commands.settings.job_from_options`)."""
        post = PostProcess(threshold=self.threshold, blur=self.blur, dilate=self.dilate, erode=self.erode,
                           min_area=self.min_area, invert=self.invert)
        plan = OutputPlan(overlay=self.overlay, soft=self.soft, cutout=self.cutout, post=post)
        return Job(self.prompts, templates=self.templates, negatives=self.negatives, union=self.union, plan=plan,
                   force=True, pipeline=Pipeline(max_pixels=max_pixels, batch_size=batch_size, stats=True),
                   refine=self.refine)


def run_job(loaded: Loaded, job: Job, uploads: Sequence[Path]) -> list[list[Result]]:
    """Segment uploaded image files with one Engine (their images batched in its model calls).

    Arguments:
        uploads: image files, each alone in a folder of its own where its outputs are written.

    Returns:
        Per upload, one Result per mask (prompt, or the union), with the paths of the files written.
    """
    items = [WorkItem(path, path.parent, UPLOAD_STEM) for path in uploads]
    job.check()
    refiner = loaded.refiner if job.refine != "none" else None
    engine = job.engine(loaded.segmenter, items, refiner=refiner)
    per_item: dict[str, list[Result]] = {str(path): [] for path in uploads}
    for result in engine.process(items):
        per_item[result.image].append(result)
    _forget_old_prompts(loaded.segmenter)
    return list(per_item.values())


def _forget_old_prompts(segmenter: Segmenter) -> None:
    """Bound the segmenter's prompt cache: a server meets endless new prompts."""
    cache = getattr(segmenter, "_embeddings", None)
    while cache is not None and len(cache) > EMBEDDING_LIMIT:
        del cache[next(iter(cache))]
