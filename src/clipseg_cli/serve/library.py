"""The server's one call into the library that ``clipseg segment`` uses: the same Job, Engine and PNG encoders.

Each upload is decoded from its bytes, segmented by `Engine.encode` (the mask steps of ``clipseg
segment``, the same PNG encoders, the same fingerprint in each file, the upload's sha256 as its input),
and answered from memory: the bytes a client receives are the bytes the CLI writes, and nothing is
written to disk. Nothing here knows about HTTP.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from clipseg_cli.constants import DEFAULT_MAX_PIXELS, DEFAULT_THRESHOLD, PROMPT_EMBEDDING_LIMIT
from clipseg_cli.errors import ClipSegError
from clipseg_cli.imaging.decode import DecodedImage, open_image
from clipseg_cli.predictor import ModelSpec, Segmenter
from clipseg_cli.refine import Refiner, check_available, load_refiner
from clipseg_cli.run.engine import Result
from clipseg_cli.run.job import Job

EMBEDDING_LIMIT = PROMPT_EMBEDDING_LIMIT  # prompts whose embeddings are kept (oldest forgotten first)


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
        """The library Job these options ask for, made as the CLI makes its own (`Job.from_options`).

        Raises:
            ClipSegError: a value out of its range, a text that is not UTF-8, a template without ``{}``.
        """
        named = {**asdict(self), "max_pixels": max_pixels, "batch_size": batch_size, "force": True, "stats": True}
        job = Job.from_options(self.prompts, named)
        job.check()
        return job


@dataclass(frozen=True)
class Upload:
    """One uploaded image: its bytes, and the name that stands for it in errors (the client's file name)."""

    data: bytes
    label: str


@dataclass(frozen=True)
class Answer:
    """One mask of an upload: its result (prompt, statistics, refinement) and its files (kind -> PNG bytes)."""

    result: Result
    files: dict[str, bytes]


def run_job(loaded: Loaded, job: Job, uploads: Sequence[Upload]) -> list[list[Answer] | ClipSegError]:
    """Segment uploads in memory with one Engine (their images batched in one model call).

    Arguments:
        uploads: the images, each decoded as ``clipseg segment`` decodes the file that holds it.

    Returns:
        Per upload, one Answer per mask (prompt, or the union), or the one-line error of an upload that
        could not be decoded (named by its label).
    """
    refiner = loaded.refiner if job.refine != "none" else None
    engine = job.engine(loaded.segmenter, refiner=refiner)
    decoded: list[DecodedImage] = []
    answers: list[list[Answer] | ClipSegError] = []
    for upload in uploads:
        try:
            decoded.append(open_image(upload.data, max_pixels=engine.max_pixels, min_side=engine.min_side,
                                      label=upload.label))
            answers.append([])
        except ClipSegError as exc:  # one bad upload never stops the others
            answers.append(ClipSegError(" ".join(str(exc).split())))
    digests = [hashlib.sha256(upload.data).hexdigest() for upload, answer in zip(uploads, answers, strict=True)
               if not isinstance(answer, ClipSegError)]
    encoded = iter(engine.encode(decoded, digests))
    for answer in answers:
        if not isinstance(answer, ClipSegError):
            answer.extend(Answer(result, files) for result, files in next(encoded))
    _forget_old_prompts(loaded.segmenter)
    return answers


def _forget_old_prompts(segmenter: Segmenter) -> None:
    """Bound the segmenter's prompt cache: a server meets endless new prompts."""
    cache = getattr(segmenter, "_embeddings", None)
    while cache is not None and len(cache) > EMBEDDING_LIMIT:
        del cache[next(iter(cache))]
