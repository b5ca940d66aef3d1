"""The batch engine: decode ahead, run the model on batches, write PNGs behind, never wait on files.

One image-tower pass per image serves every prompt; prompts are embedded once per run. Decoding
and writing run in worker threads (Pillow and torch release the GIL), with bounded queues so that
memory does not grow with the number of images.
"""

from __future__ import annotations

import math
import os
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import numpy as np

from clipseg_cli.constants import DEFAULT_MAX_PIXELS
from clipseg_cli.errors import ClipSegError
from clipseg_cli.fingerprint import file_sha256, make_record, prompt_key, stale_reason
from clipseg_cli.imaging.decode import DecodedImage, header_pixels, open_image
from clipseg_cli.imaging.writing import remove_stale_temps
from clipseg_cli.inputs import FileSet, WorkItem
from clipseg_cli.outputs import OutputPlan, label_for, output_paths, write_outputs
from clipseg_cli.postprocess import clean_mask, fires, mask_and_map, stats, veto
from clipseg_cli.predictor import Segmenter, probabilities, upsample
from clipseg_cli.prompts import Prompt

if TYPE_CHECKING:
    from PIL import Image

    from clipseg_cli.refine import Refiner

# Full-size float32 maps made at once per image being written (16 MB), or one map when larger.
CHUNK_VALUES = 1 << 22
_MAX_QUEUED = 8  # results waiting for an earlier, slower item: at most this many times the decode depth


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
    reason: str | None = None  # why an existing output was redone; None when fresh, skipped or forced
    stats: dict = field(default_factory=dict)
    records: dict[str, str] = field(default_factory=dict, repr=False)  # per kind, the fingerprint to store
    refine: str | None = None  # the refinement that ran (--refine); not in the JSON line when none did

    def to_json(self) -> dict:
        record = asdict(self)
        del record["records"]
        if record["refine"] is None:
            del record["refine"]
        record.update(record.pop("stats"))
        record.setdefault("coverage", None)  # the key is always there; null where no mask was made this run
        return record


@dataclass(frozen=True)
class Target:
    """One map written per image: a prompt, or the union of all of them."""

    label: str  # in file names
    prompt: str  # for people
    key: str = ""  # everything asked (prompt keys, union, negatives), for fingerprints
    text: str = ""  # the prompt with its negatives, for people reading a fingerprint


def default_batch_size(device_type: str) -> int:
    """Images per model call: small on CPUs (little to gain, memory to lose), larger on GPUs (cuda, mps)."""
    return 4 if device_type == "cpu" else 16


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
        refiner: Refiner | None = None,
    ) -> None:
        """Arguments:
        names: how prompts are shown and named (texts by default; give names for image prompts).
        negatives: prompts whose masks are cut out of every positive mask.
        union: write one mask, the union of all prompts, instead of one per prompt.
        trim: free the text tower and unused image layers once the prompts are embedded.
        stats: give each result the mask's coverage, box and mean probability (costs a full-size pass).
        protected: files never written to (the inputs): an item whose output would be one of them fails.
        refiner: refines each map with the image after the prompt algebra, before the mask steps
            (`clipseg_cli.refine`); None (``--refine none``) writes the model's maps as they are.
        """
        if not prompts:
            raise ClipSegError("give at least one prompt")
        self.segmenter = segmenter
        names = list(names) if names else [p if isinstance(p, str) else f"image-{i + 1}" for i, p in
                                           enumerate(prompts)]
        distinct = {}  # a prompt given twice is run once
        for prompt, name in zip(prompts, names, strict=True):
            distinct.setdefault(prompt_key(prompt), (prompt, name))
        self.prompts = [prompt for prompt, _ in distinct.values()]
        names = [name for _, name in distinct.values()]
        self.negatives = list({prompt_key(p): p for p in negatives}.values())
        self.plan = plan or OutputPlan()
        self.batch_size = batch_size or default_batch_size(segmenter.device_type)
        self.force = force
        self.max_pixels = max_pixels
        self.workers = workers
        self.trim = trim
        self.stats = stats
        self.protected = FileSet(protected)
        self.refiner = refiner
        self.targets = self._targets(names, union)
        # fp32 is the reference path: decode at full size. Faster precisions may decode JPEGs at
        # reduced scale, still at least twice the model's input size, when only the mask is needed.
        exact = segmenter.exact or self.plan.needs_full_image or refiner is not None
        self.min_side = None if exact else 2 * max(segmenter.preprocessing.size)
        self.union = union
        self.settings = {**self.plan.settings(), "decode": "full" if self.min_side is None else f"min {self.min_side}"}
        if refiner is not None:  # absent without refinement: those outputs stay byte-identical
            self.settings["refine"] = refiner.name
        self.model_identity = segmenter.identity
        # maps that each depend on one prompt are written by several workers at once
        self.parts = _split(len(self.targets), 1 if union or self.negatives else workers)
        self._swept: set[os.PathLike[str]] = set()  # output folders cleared of stale temporary files

    def _targets(self, names: list[str], union: bool) -> list[Target]:
        """One target per prompt (or one for the union), named by `label_for`.

        A text prompt alone is named by its text; image prompts, unions and negatives add the hash
        of everything asked, so that no two different requests share a file name.
        """
        keys = [prompt_key(prompt) for prompt in self.prompts]
        negative_names = [p if isinstance(p, str) else "image" for p in self.negatives]
        negative_key = "".join(" not " + prompt_key(p) for p in self.negatives)
        negative_text = " not " + " | ".join(negative_names) if self.negatives else ""
        if union:
            key = "union(" + ", ".join(keys) + ")" + negative_key
            slug_text = "union " + " ".join(names) + (" not " + " ".join(negative_names) if self.negatives else "")
            prompt = " | ".join(names)
            return [Target(label_for(slug_text, key), prompt, key, prompt + negative_text)]
        targets = []
        for name, key in zip(names, keys, strict=True):
            full_key = key + negative_key
            hashed = "image:" in key or "visual:" in key or bool(self.negatives)
            slug_text = name + (" not " + " ".join(negative_names) if self.negatives else "")
            label = label_for(slug_text, full_key if hashed else None)
            targets.append(Target(label, name, full_key, name + negative_text))
        taken = Counter(target.label for target in targets)  # names given through the API may repeat
        return [replace(t, label=label_for(t.prompt, t.key)) if taken[t.label] > 1 else t for t in targets]

    def process(self, items: Iterable[WorkItem]) -> Iterator[Result]:
        """Process the items; results come in input order, as soon as each is written.

        When the run is cut short (Ctrl-C, a signal, a closed stdout), `unreported` gives the
        results that were written but not yet yielded.

        Returns:
            An iterator of one Result per (item, target).
        """
        self._slots: deque[_Slot] = deque()
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="clipseg-io")
        try:
            self.segmenter.embed(self.prompts + self.negatives)
            if self.trim:
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
        slots: deque[_Slot] = getattr(self, "_slots", deque())
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

    def _pipeline(self, items: Iterator[WorkItem], pool: ThreadPoolExecutor) -> Iterator[Result]:
        """Decode ahead, run batches, write behind; yield each item's results once all are final, in input order.

        Memory is bounded three ways: at most ``2 * batch_size + workers`` images decoding, decoded
        images holding at most ``2 * max_pixels`` pixels in total (counted from their headers), and
        at most ``batch_size + workers`` images being written.
        """
        depth = 2 * self.batch_size + self.workers
        pixel_budget = 2 * self.max_pixels
        ordered = self._slots  # one slot per item, in input order; open ones are still decoding
        decoding: deque[tuple[WorkItem, list[Result], _Slot, Future]] = deque()
        held: tuple[WorkItem, list[Result], int] | None = None  # an item waiting for pixels to be freed
        exhausted = False
        while True:
            while (held or not exhausted) and len(decoding) < depth and len(ordered) < _MAX_QUEUED * depth:
                if held is None:
                    item = next(items, None)
                    if item is None:
                        exhausted = True
                        break
                    planned = self._plan(item)
                    if all(result.status != "pending" for result in planned):  # skipped, or failed
                        ordered.append(_Slot([planned], open=False))
                        continue
                    held = (item, planned, min(header_pixels(item.source), self.max_pixels))
                item, planned, pixels = held
                if ordered and sum(slot.pixels for slot in ordered) + pixels > pixel_budget:
                    break
                held = None
                if item.output_dir not in self._swept:  # once per folder, before our first write there
                    self._swept.add(item.output_dir)
                    remove_stale_temps(item.output_dir)
                slot = _Slot([], pixels=pixels)
                ordered.append(slot)
                decoding.append((item, planned, slot, pool.submit(open_image, item.source,
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

    def _run_batch(self, decoding: deque[tuple[WorkItem, list[Result], _Slot, Future]],
                   pool: ThreadPoolExecutor) -> None:
        """Take up to batch_size decoded images, run the model on them and submit their writes to the pool."""
        batch: list[tuple[WorkItem, list[Result], _Slot, DecodedImage]] = []
        while decoding and len(batch) < self.batch_size:
            item, planned, slot, future = decoding.popleft()
            try:
                batch.append((item, planned, slot, future.result()))
            except Exception as exc:  # one bad image never stops the batch
                slot.close([self._failed(item, exc)])
        if batch:
            logits = self.segmenter.logits([decoded.image for *_, decoded in batch], self.prompts + self.negatives)
            for (item, planned, slot, decoded), image_logits in zip(batch, logits, strict=True):
                slot.close([pool.submit(self._finish, item, decoded, image_logits, part,
                                        planned[part.start : part.stop]) for part in self.parts])

    def _masks(self, logits: Any, image: Image.Image, size: tuple[int, int], part: range
               ) -> Iterator[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]:
        """(mask M, map m or None, foreground colours or None) for each target of ``part``, at the
        image's size (see `_mask_and_map`).

        Full-size maps are made a chunk of prompts at a time (`map_chunks`); the union and the
        negatives are running maxima, so memory does not grow with the number of prompts.
        """
        post, count = self.plan.post, len(self.prompts)
        if self.union or self.negatives:  # the negatives' veto, and the union, need every map
            vetoed = None
            for chunk in map_chunks(range(count, count + len(self.negatives)), size):
                fired = fires(probabilities(logits[chunk.start : chunk.stop], size), post.threshold)
                vetoed = fired if vetoed is None else np.logical_or(vetoed, fired, out=vetoed)
            if self.union:
                union = None
                for chunk in map_chunks(range(count), size):
                    top = probabilities(logits[chunk.start : chunk.stop], size).max(axis=0)
                    union = top if union is None else np.maximum(union, top, out=union)
                yield self._mask_and_map(veto(union, vetoed), image)
                return
            for chunk in map_chunks(part, size):
                for prob in probabilities(logits[chunk.start : chunk.stop], size):
                    yield self._mask_and_map(veto(prob, vetoed), image)
        elif self.stats or self.plan.needs_probabilities or self.refiner is not None:
            for chunk in map_chunks(part, size):
                for prob in probabilities(logits[chunk.start : chunk.stop], size):
                    yield self._mask_and_map(prob, image)
        else:  # sigmoid(x) >= t exactly where x >= logit(t): no full-size sigmoid needed
            cut = math.log(post.threshold / (1 - post.threshold))
            for chunk in map_chunks(part, size):
                for upsampled in upsample(logits[chunk.start : chunk.stop], size):
                    yield clean_mask(np.asarray(upsampled >= cut), post), None, None

    def _mask_and_map(self, prob: np.ndarray, image: Image.Image
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Refine one HxW map with the image (when a refiner is set), then `mask_and_map`.

        Returns:
            (HxW bool mask M, HxW float32 map m, HxWx3 uint8 foreground colours for the cut-out or None).
        """
        foreground = None
        if self.refiner is not None:
            refined = self.refiner(image, prob, self.plan.post.threshold)
            prob = refined.map
            if self.plan.cutout and not self.plan.post.invert:  # colours of the object, not of the background
                foreground = refined.foreground
        return (*mask_and_map(prob, self.plan.post), foreground)

    def _plan(self, item: WorkItem) -> list[Result]:
        """Plan one item before decoding it: a result per target, 'skipped' where its files exist with
        a matching fingerprint (unless forced), else 'pending' (to write), with the reason where an
        existing file did not match.

        Every target 'failed' when one of the item's outputs would overwrite a protected file.
        """
        try:  # a pipe or a folder is never read here: decoding reports the problem
            digest = file_sha256(item.source) if item.source.is_file() else "not a file"
        except OSError:
            digest = "unreadable"
        results = []
        for target in self.targets:
            paths = output_paths(item.output_dir, item.stem, target.label, self.plan)
            clash = next((path for path in paths.values() if path in self.protected), None)
            if clash is not None:
                return self._failed(item, ClipSegError(f"{item.source}: its output {clash} would overwrite an input "
                                                        "file; rename that file or choose another --output-dir"))
            records = {kind: make_record(self.plan.output_kind(kind), input_sha256=digest, prompt=target.key,
                                         prompt_text=target.text, model=self.model_identity,
                                         settings={**self.settings, **self.plan.looks(kind)})
                       for kind in paths}
            result = Result(str(item.source), target.prompt, "pending", records=records,
                            **{kind: str(path) for kind, path in paths.items()})
            if not self.force:
                existing = [kind for kind, path in paths.items() if os.path.lexists(path)]
                reasons = (stale_reason(paths[kind], records[kind]) for kind in existing)
                result.reason = next((why for why in reasons if why is not None), None)
                if result.reason is None and len(existing) == len(paths):
                    result.status = "skipped"
            results.append(result)
        return results

    def _failed(self, item: WorkItem, exc: Exception, part: range | None = None) -> list[Result]:
        error = str(exc) if isinstance(exc, ClipSegError) else f"{item.source}: {type(exc).__name__}: {exc}"
        targets = self.targets if part is None else self.targets[part.start : part.stop]
        return [Result(str(item.source), t.prompt, "failed", error=" ".join(error.split())) for t in targets]

    def _finish(self, item: WorkItem, decoded: DecodedImage, logits: Any, part: range,
                results: list[Result]) -> list[Result]:
        """Upsample, combine, post-process and write some of one image's maps (in a worker thread).

        Each written file carries its result's fingerprint record; statistics come from M and m.

        Arguments:
            logits: Pxhxw (torch or numpy), every prompt's then every negative's. part: the targets to write.
            results: their planned results (from `_plan`); the pending ones are written.
        """
        try:
            targets = self.targets[part.start : part.stop]
            masks = self._masks(logits, decoded.image, decoded.size, part)
            for index, target, result, (mask, soft, foreground) in zip(part, targets, results, masks, strict=True):
                if result.status == "pending":
                    paths = output_paths(item.output_dir, item.stem, target.label, self.plan)
                    write_outputs(decoded.image, mask, soft, paths, self.plan, result.records, foreground=foreground,
                                  index=index)
                    result.stats = stats(mask, soft) if self.stats else {}
                    result.refine = self.refiner.name if self.refiner is not None else None
                    result.status = "ok"
            return results
        except OSError as exc:
            where = exc.filename or item.output_dir
            return self._failed(item, ClipSegError(f"cannot write {where}: {exc.strerror or exc}"), part)
        except Exception as exc:  # one bad image never stops the batch
            return self._failed(item, exc, part)


def map_chunks(indices: range, size: tuple[int, int]) -> Iterator[range]:
    """``indices`` cut into runs of prompts whose full-size float32 maps take at most `CHUNK_VALUES`
    values together (at least one map per run).

    Arguments:
        size: (width, height) of the image.
    """
    step = max(1, CHUNK_VALUES // max(1, size[0] * size[1]))
    return (range(start, min(start + step, indices.stop)) for start in range(indices.start, indices.stop, step))


@dataclass
class _Slot:
    """One item's place in the output order: its results, or the futures that write them.

    open: the image is still decoding, more parts will come. pixels: reserved for its decoded image.
    """

    parts: list[list[Result] | Future]
    open: bool = True
    pixels: int = 0

    @property
    def writes(self) -> int:
        return sum(isinstance(part, Future) for part in self.parts)

    def close(self, parts: list[list[Result] | Future]) -> None:
        self.parts.extend(parts)
        self.open = False

    def done(self) -> bool:
        return not self.open and all(part.done() for part in self.parts if isinstance(part, Future))

    def results(self) -> list[Result]:
        """Wait for the writes; the parts become one list of results, in target order.

        Returns:
            That list (the slot's own: take results from it as they are reported).
        """
        self.parts = [[result for part in self.parts
                       for result in (part.result() if isinstance(part, Future) else part)]]
        return self.parts[0]


def _split(count: int, pieces: int) -> list[range]:
    """``range(count)`` cut into at most ``pieces`` contiguous, non-empty ranges."""
    pieces = max(1, min(pieces, count))
    bounds = [round(i * count / pieces) for i in range(pieces + 1)]
    return [range(a, b) for a, b in pairwise(bounds)]
