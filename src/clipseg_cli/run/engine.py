"""The batch engine: decode ahead, run the model on batches, write PNGs behind, never wait on files.

One image-tower pass per image serves every prompt; prompts are embedded once per run. Decoding
and writing run in worker threads (Pillow and torch release the GIL), with bounded queues so that
memory does not grow with the number of images.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from clipseg_cli.constants import DEFAULT_MAX_PIXELS
from clipseg_cli.errors import ClipSegError
from clipseg_cli.imaging.decode import DecodedImage, header_pixels, open_image
from clipseg_cli.imaging.writing import remove_stale_temps
from clipseg_cli.postprocess import stats
from clipseg_cli.predictor import Segmenter
from clipseg_cli.run.inputs import WorkItem
from clipseg_cli.run.maps import MaskMaths
from clipseg_cli.run.outputs import encode_outputs, write_outputs
from clipseg_cli.run.slots import Slot, split
from clipseg_cli.run.targets import Result, Targets, decode_min_side, no_stats, recorded_settings

if TYPE_CHECKING:

    from clipseg_cli.refine import Refiner

_MAX_QUEUED = 8  # results waiting for an earlier, slower item: at most this many times the decode depth


@dataclass(frozen=True, kw_only=True)
class Pipeline:
    """How a run computes, whatever it writes: the Engine's own choices (a `clipseg_cli.run.job.Job` is one).

    batch_size: images per model call (None: 4 on CPUs, little to gain and memory to lose; 16 on GPUs).
    max_pixels: decoded images larger than this are refused or reduced (see `open_image`).
    stats: give each result the mask's coverage, box and mean probability (costs a full-size pass).
    workers: decode and write threads.
    """

    batch_size: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    stats: bool = True
    workers: int = 2


class Engine:
    """Runs a Segmenter over many images for fixed `Targets` and writes the outputs (the mask maths: `MaskMaths`)."""

    def __init__(self, segmenter: Segmenter, targets: Targets, pipeline: Pipeline = Pipeline(), *,
                 drop_unused_layers: bool = False, refiner: Refiner | None = None) -> None:
        """Arguments:
            segmenter: the loaded model.
            targets: what to write (`Targets.build`).
            pipeline: batch size, pixel bound, statistics and threads.
            drop_unused_layers: free the text tower and unused image layers once the prompts are embedded.
            refiner: refines each map with the image after the prompt algebra, before the mask steps
                (`clipseg_cli.refine`); None (``--refine none``) writes the model's maps as they are.
        """
        self.segmenter, self.targets, self.pipeline = segmenter, targets, pipeline
        self.plan = targets.plan
        self.prompts, self.negatives = list(targets.prompts), list(targets.negatives)
        self.batch_size = pipeline.batch_size or (4 if segmenter.device_type == "cpu" else 16)
        self.max_pixels, self.workers, self.stats = pipeline.max_pixels, pipeline.workers, pipeline.stats
        self.drop_unused_layers, self.refiner = drop_unused_layers, refiner
        self.min_side = decode_min_side(self.plan, segmenter.is_fp32, refiner is not None, segmenter.preprocessing.size)
        self.recorded = recorded_settings(self.plan, self.min_side, refiner.name if refiner is not None else None)
        # maps that each depend on one prompt are written by several workers at once
        single = self.targets.union or self.negatives or self.plan.overlay_combined  # combined: all masks at once
        self.parts = split(len(self.targets), 1 if single else self.workers)
        self._swept: set[os.PathLike[str]] = set()  # output folders cleared of stale temporary files
        self.maths = MaskMaths(self.plan, len(self.prompts), len(self.negatives), union=targets.union,
                               maps=self.stats or self.plan.needs_probabilities or refiner is not None, refiner=refiner)

    def process(self, items: Iterable[WorkItem]) -> Iterator[Result]:
        """Process the items; results come in input order, as soon as each is written.

        When the run is cut short (Ctrl-C, a signal, a closed stdout), `unreported` gives the
        results that were written but not yet yielded.

        Returns:
            An iterator of one Result per (item, target).
        """
        self._slots: deque[Slot] = deque()
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="clipseg-io")
        try:
            self.segmenter.embed(self.prompts + self.negatives)
            if self.drop_unused_layers:
                self.segmenter.drop_unused_layers()
            yield from self._pipeline(iter(items), self._pool)
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def unreported(self) -> list[Result]:
        """After an interrupted `process`: the results of writes that finished but were not yielded yet.

        Waits for the writes in flight (their files are then complete); cancels the others.

        Returns:
            Those results in input order (empty after a complete run, and on a second call).
        """
        slots: deque[Slot] = getattr(self, "_slots", deque())
        if slots:
            self._pool.shutdown(wait=True, cancel_futures=True)
        results = []
        while slots:
            for part in slots.popleft().parts:
                if not isinstance(part, Future):
                    results.extend(part)
                elif part.done() and not part.cancelled():
                    results.extend(part.result())
        return results

    def maps(self, images: Sequence[DecodedImage]) -> list[list[tuple[np.ndarray, np.ndarray | None]]]:
        """The masks and maps that `process` would write for these images, in memory: no file is read or written.

        Arguments:
            images: decoded images (`open_image`), run as one model batch.

        Returns:
            Per image, per target: (HxW bool mask, HxW float32 map, or None where nothing needs it).
        """
        if not images:
            return []
        logits = self.segmenter.logits([decoded.image for decoded in images], self.prompts + self.negatives)
        every = range(len(self.targets))
        return [[(mask, soft) for mask, soft, _ in self.maths.masks(image_logits, decoded.image, decoded.size, every)]
                for decoded, image_logits in zip(images, logits, strict=True)]

    def encode(self, images: Sequence[DecodedImage], digests: Sequence[str]) -> list[list[tuple[Result, dict]]]:
        """The files that `process` would write for these images, as PNG bytes in memory (fingerprints
        included): no file is read or written. The combined overlay is not made here.

        Arguments:
            images: decoded images (`open_image`), run as one model batch.
            digests: each image's sha256 (what its files' fingerprints record as the input).

        Returns:
            Per image, per target: its 'ok' Result (statistics as `process` gives them) and its files
            (kind -> PNG bytes).
        """
        if not images:
            return []
        logits = self.segmenter.logits([decoded.image for decoded in images], self.prompts + self.negatives)
        every, answers = range(len(self.targets)), []
        for decoded, digest, image_logits in zip(images, digests, logits, strict=True):
            masks = self.maths.masks(image_logits, decoded.image, decoded.size, every)
            answers.append([])
            for index, target, (mask, soft, foreground) in zip(every, self.targets.targets, masks, strict=True):
                records = self.targets.records(target, digest, self.segmenter.identity, self.recorded)
                result = self._written(Result(decoded.path or "", target.prompt, "pending", records=records),
                                       mask, soft)
                answers[-1].append((result, dict(encode_outputs(decoded.image, mask, soft, self.plan, records,
                                                                foreground=foreground, index=index))))
        return answers

    def _written(self, result: Result, mask: np.ndarray, soft: np.ndarray | None) -> Result:
        """Returns: ``result``, 'ok', with its statistics and refinement (its files are written)."""
        result.stats = stats(mask, soft) if self.stats else no_stats()
        result.refine = self.refiner.name if self.refiner is not None else None
        result.status = "ok"
        return result

    def _pipeline(self, items: Iterator[WorkItem], pool: ThreadPoolExecutor) -> Iterator[Result]:
        """Decode ahead, run batches, write behind; yield each item's results once all are final, in input order.

        Memory is bounded three ways: at most ``2 * batch_size + workers`` images decoding, decoded
        images holding at most ``2 * max_pixels`` pixels in total (counted from their headers), and
        at most ``batch_size + workers`` images being written.
        """
        depth = 2 * self.batch_size + self.workers
        pixel_budget = 2 * self.max_pixels
        ordered = self._slots  # one slot per item, in input order; open ones are still decoding
        decoding: deque[tuple[WorkItem, list[Result], Slot, Future]] = deque()
        held: tuple[WorkItem, list[Result], int] | None = None  # an item waiting for pixels to be freed
        exhausted = False
        while True:
            while (held or not exhausted) and len(decoding) < depth and len(ordered) < _MAX_QUEUED * depth:
                if held is None:
                    item = next(items, None)
                    if item is None:
                        exhausted = True
                        break
                    decided = self.targets.decide(item, self.segmenter.identity, self.recorded)
                    if all(result.status != "pending" for result in decided):  # skipped, or failed
                        ordered.append(Slot([decided], open=False))
                        continue
                    held = (item, decided, min(header_pixels(item.source), self.max_pixels))
                item, decided, pixels = held
                if ordered and sum(slot.pixels for slot in ordered) + pixels > pixel_budget:
                    break
                held = None
                if item.output_dir not in self._swept:  # once per folder, before our first write there
                    self._swept.add(item.output_dir)
                    remove_stale_temps(item.output_dir)
                slot = Slot([], pixels=pixels)
                ordered.append(slot)
                decoding.append((item, decided, slot, pool.submit(open_image, item.source,
                                                                  max_pixels=self.max_pixels, min_side=self.min_side)))
            self._run_batch(decoding, pool)
            # bounded memory: wait for the oldest write once more than batch_size + workers are in flight
            writing = sum(slot.writes for slot in ordered)
            while ordered and not ordered[0].open and (ordered[0].done() or not decoding
                                                      or writing > self.batch_size + self.workers):
                writing -= ordered[0].writes
                results = ordered[0].results()
                while results:  # each result leaves the slot as it is yielded: `unreported` sees the rest
                    yield results.pop(0)
                ordered.popleft()
            if exhausted and held is None and not decoding and not ordered:
                return

    def _run_batch(self, decoding: deque[tuple[WorkItem, list[Result], Slot, Future]],
                   pool: ThreadPoolExecutor) -> None:
        """Take up to batch_size decoded images, run the model on them and submit their writes to the pool."""
        batch: list[tuple[WorkItem, list[Result], Slot, DecodedImage]] = []
        while decoding and len(batch) < self.batch_size:
            item, decided, slot, future = decoding.popleft()
            try:
                batch.append((item, decided, slot, future.result()))
            except Exception as exc:  # one bad image never stops the batch
                slot.close([self.targets.failed(item, exc)])
        if batch:
            logits = self.segmenter.logits([decoded.image for *_, decoded in batch], self.prompts + self.negatives)
            for (item, decided, slot, decoded), image_logits in zip(batch, logits, strict=True):
                slot.close([pool.submit(self._finish, item, decoded, image_logits, part,
                                        decided[part.start : part.stop]) for part in self.parts])

    def _finish(self, item: WorkItem, decoded: DecodedImage, logits: Any, part: range,
                results: list[Result]) -> list[Result]:
        """Upsample, combine, post-process and write some of one image's maps (in a worker thread).

        Each written file carries its result's fingerprint record; statistics come from M and m.

        Arguments:
            logits: Pxhxw (torch or numpy), every prompt's then every negative's.
            part: the targets to write.
            results: their decided results (from `Targets.decide`); the pending ones are written.
        """
        try:
            targets = self.targets.targets[part.start : part.stop]
            masks, image_masks = self.maths.masks(logits, decoded.image, decoded.size, part), []
            for index, target, result, (mask, soft, foreground) in zip(part, targets, results, masks, strict=True):
                if self.plan.overlay_combined:  # kept only for it: 30 prompts' masks of a large image are 100s of MB
                    image_masks.append(mask)
                if result.status == "pending":
                    paths = self.targets.paths(item, target)
                    write_outputs(decoded.image, mask, soft, paths, self.plan, result.records, foreground=foreground,
                                  index=index)
                    self._written(result, mask, soft)
            if self.plan.overlay_combined:  # one part: every mask of the image is known
                self.targets.write_combined(decoded.image, image_masks, results)
            return results
        except OSError as exc:
            where = exc.filename or item.output_dir
            return self.targets.failed(item, ClipSegError(f"cannot write {where}: {exc.strerror or exc}"), part)
        except Exception as exc:  # one bad image never stops the batch
            return self.targets.failed(item, exc, part)
