"""The batch engine: decode ahead, run the model on batches, write PNGs behind, never wait on files.

One image-tower pass per image serves every prompt; prompts are embedded once per run. Decoding
and writing run in worker threads (Pillow and torch release the GIL), with bounded queues so that
memory does not grow with the number of images.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import pairwise

import numpy as np
import torch

from clipseg_cli.constants import DEFAULT_MAX_PIXELS
from clipseg_cli.errors import ClipSegError
from clipseg_cli.imaging.decode import DecodedImage, open_image
from clipseg_cli.inputs import FileSet, WorkItem
from clipseg_cli.outputs import OutputPlan, output_paths, unique_labels, write_outputs
from clipseg_cli.postprocess import apply, combine, refine, stats
from clipseg_cli.predictor import Prompt, Segmenter, probabilities, upsample


@dataclass
class Result:
    """What happened to one (image, prompt): the line ``--json`` prints."""

    image: str
    prompt: str
    status: str  # ok, skipped or failed
    mask: str | None = None
    overlay: str | None = None
    cutout: str | None = None
    error: str | None = None
    stats: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        record = asdict(self)
        record.update(record.pop("stats"))
        record.setdefault("coverage", None)  # the key is always there; null where no mask was made this run
        return record


@dataclass(frozen=True)
class Target:
    """One map written per image: a prompt, or the union of all of them."""

    label: str  # in file names
    prompt: str  # for people


def default_batch_size(device: torch.device) -> int:
    """Images per model call: small on CPUs (little to gain, memory to lose), larger on GPUs."""
    return 4 if device.type == "cpu" else 16


class Engine:
    """Runs a Segmenter over many images for a fixed set of prompts and writes the outputs."""

    def __init__(
        self,
        segmenter: Segmenter,
        prompts: Sequence[Prompt],
        *,
        plan: OutputPlan | None = None,
        names: Sequence[str] | None = None,
        negatives: Sequence[Prompt] = (),
        union: bool = False,
        batch_size: int | None = None,
        force: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        workers: int = 2,
        trim: bool = False,
        protected: Iterable[str | os.PathLike[str]] = (),
        stats: bool = True,
    ) -> None:
        """Arguments:
        names: how prompts are shown and named (texts by default; give names for image prompts).
        negatives: prompts whose masks are cut out of every positive mask.
        union: write one mask, the union of all prompts, instead of one per prompt.
        trim: free the text tower and unused image layers once the prompts are embedded.
        stats: give each result the mask's coverage, box and mean probability (costs a full-size pass).
        protected: files never written to (the inputs): an item whose output would be one of them fails.
        """
        if not prompts:
            raise ClipSegError("give at least one prompt")
        self.segmenter = segmenter
        self.prompts = list(prompts)
        self.negatives = list(negatives)
        self.plan = plan or OutputPlan()
        self.batch_size = batch_size or default_batch_size(segmenter.device)
        self.force = force
        self.max_pixels = max_pixels
        self.workers = workers
        self.trim = trim
        self.stats = stats
        self.protected = FileSet(protected)
        names = list(names) if names else [p if isinstance(p, str) else f"image-{i + 1}" for i, p in
                                           enumerate(self.prompts)]
        self.targets = self._targets(names, union)
        # fp32 is the reference path: decode at full size. Faster precisions may decode JPEGs at
        # reduced scale, still at least twice the model's input size, when only the mask is needed.
        exact = segmenter.dtype == torch.float32 or self.plan.needs_full_image
        self.min_side = None if exact else 2 * max(segmenter.preprocessing.size)
        self.union = union
        # maps that each depend on one prompt are written by several workers at once
        self.parts = _split(len(self.targets), 1 if union or self.negatives else workers)

    def _targets(self, names: list[str], union: bool) -> list[Target]:
        negative = [p if isinstance(p, str) else "image" for p in self.negatives]
        suffix = "-not-" + "-".join(unique_labels(negative)) if negative else ""
        if union:
            return [Target(unique_labels(["union " + " ".join(names) + suffix])[0], " | ".join(names))]
        return [Target(label + suffix if suffix else label, name)
                for label, name in zip(unique_labels(names), names, strict=True)]

    def run(self, items: Iterable[WorkItem]) -> Iterator[Result]:
        """Process the items; results come in input order, as soon as each is written.

        Returns:
            An iterator of one Result per (item, target).
        """
        self.segmenter.embed(self.prompts + self.negatives)
        if self.trim:
            self.segmenter.drop_unused_layers()
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="clipseg-io")
        try:
            yield from self._pipeline(iter(items), pool)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _pipeline(self, items: Iterator[WorkItem], pool: ThreadPoolExecutor) -> Iterator[Result]:
        decoding: deque[tuple[WorkItem, list[Result], Future]] = deque()  # with the planned results
        ordered: deque[list[Result] | Future] = deque()  # results ready, or being written
        exhausted = False
        while True:
            while not exhausted and len(decoding) < 2 * self.batch_size + self.workers:
                item = next(items, None)
                planned = self._skipped(item) if item is not None else []
                if item is None:
                    exhausted = True
                elif all(result.status != "pending" for result in planned):  # skipped, or failed
                    ordered.append(planned)
                else:
                    decoding.append((item, planned, pool.submit(open_image, item.source, max_pixels=self.max_pixels,
                                                                min_side=self.min_side)))
            batch: list[tuple[WorkItem, list[Result], DecodedImage]] = []
            while decoding and len(batch) < self.batch_size:
                item, planned, future = decoding.popleft()
                try:
                    batch.append((item, planned, future.result()))
                except Exception as exc:  # one bad image never stops the batch
                    ordered.append(self._failed(item, exc))
            if batch:
                logits = self.segmenter.logits([decoded.image for *_, decoded in batch], self.prompts + self.negatives)
                for (item, planned, decoded), image_logits in zip(batch, logits, strict=True):
                    ordered.extend(pool.submit(self._finish, item, decoded, image_logits, part,
                                               planned[part.start : part.stop]) for part in self.parts)
            # bounded memory: wait for the oldest write once more than batch_size + workers are in flight
            writing = sum(isinstance(entry, Future) for entry in ordered)
            while ordered and (isinstance(ordered[0], list) or ordered[0].done()
                               or writing > self.batch_size + self.workers or (exhausted and not decoding)):
                writing -= isinstance(ordered[0], Future)
                head = ordered.popleft()
                yield from head if isinstance(head, list) else head.result()
            if exhausted and not decoding and not ordered:
                return

    def _masks(self, logits: torch.Tensor, size: tuple[int, int], part: range
               ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """(mask, probabilities or None) for each target of ``part``, at the image's size."""
        post = self.plan.post
        if self.union or self.negatives:  # every map is needed for each target
            probs = probabilities(logits, size)
            count = len(self.prompts)
            negatives = probs[count:] if self.negatives else None
            for prob in combine(probs[:count], union=self.union, negatives=negatives, threshold=post.threshold):
                yield apply(prob, post), prob
        elif self.stats or self.plan.needs_probabilities:
            for prob in probabilities(logits[part.start : part.stop], size):
                yield apply(prob, post), prob
        else:  # sigmoid(x) >= t exactly where x >= logit(t): no full-size sigmoid needed
            cut = math.log(post.threshold / (1 - post.threshold))
            for upsampled in upsample(logits[part.start : part.stop], size):
                yield refine((upsampled >= cut).numpy(), post), None

    def _skipped(self, item: WorkItem) -> list[Result]:
        """A result per target: 'skipped' where its files exist (unless forced), else 'pending'.

        Every target 'failed' when one of the item's outputs would overwrite a protected file.
        """
        results = []
        for target in self.targets:
            paths = output_paths(item.output_dir, item.stem, target.label, self.plan)
            clash = next((path for path in paths.values() if path in self.protected), None)
            if clash is not None:
                return self._failed(item, ClipSegError(f"{item.source}: its output {clash} would overwrite an input "
                                                        "file; rename that file or choose another --output-dir"))
            done = not self.force and all(path.is_file() for path in paths.values())
            results.append(Result(str(item.source), target.prompt, "skipped" if done else "pending",
                                  **{kind: str(path) for kind, path in paths.items()}))
        return results

    def _failed(self, item: WorkItem, exc: Exception, part: range | None = None) -> list[Result]:
        error = str(exc) if isinstance(exc, ClipSegError) else f"{item.source}: {type(exc).__name__}: {exc}"
        targets = self.targets if part is None else self.targets[part.start : part.stop]
        return [Result(str(item.source), t.prompt, "failed", error=" ".join(error.split())) for t in targets]

    def _finish(self, item: WorkItem, decoded: DecodedImage, logits: torch.Tensor, part: range,
                results: list[Result]) -> list[Result]:
        """Upsample, combine, post-process and write some of one image's maps (in a worker thread).

        Arguments:
            logits: Pxhxw, every prompt's then every negative's. part: the targets to write.
            results: their planned results (from `_skipped`); the pending ones are written.
        """
        try:
            targets = self.targets[part.start : part.stop]
            for target, result, (mask, prob) in zip(targets, results, self._masks(logits, decoded.size, part),
                                                    strict=True):
                if result.status == "pending":
                    paths = output_paths(item.output_dir, item.stem, target.label, self.plan)
                    write_outputs(decoded.image, mask, prob, paths, self.plan)
                    result.stats = stats(mask, prob) if self.stats else {}
                    result.status = "ok"
            return results
        except OSError as exc:
            where = exc.filename or item.output_dir
            return self._failed(item, ClipSegError(f"cannot write {where}: {exc.strerror or exc}"), part)
        except Exception as exc:  # one bad image never stops the batch
            return self._failed(item, exc, part)


def _split(count: int, pieces: int) -> list[range]:
    """``range(count)`` cut into at most ``pieces`` contiguous, non-empty ranges."""
    pieces = max(1, min(pieces, count))
    bounds = [round(i * count / pieces) for i in range(pieces + 1)]
    return [range(a, b) for a, b in pairwise(bounds)]
