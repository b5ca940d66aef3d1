"""The masks of every class for a stream of images, by the Engine's own maths, and the pipeline that labels
them: decode ahead and write behind in threads, the model in between, in bounded queues.

Each class has an `Engine` (its prompts, their union, the negatives and the mask steps of ``clipseg batch``);
they share one Segmenter through `SharedLogits`, so the image tower runs once per image for all classes.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from clipseg_cli.fingerprint import prompt_key
from clipseg_cli.imaging.decode import DecodedImage, open_image

if TYPE_CHECKING:
    import numpy as np

    from clipseg_cli.predictor import Segmenter
    from clipseg_cli.run.engine import Engine

Task = TypeVar("Task")
Maps = list[tuple["np.ndarray", "np.ndarray"]]  # per class: (HxW bool mask, HxW float32 map)


class SharedLogits:
    """A Segmenter as each class's Engine sees it: the logits of a batch of images are computed once, for
    every prompt and negative of every class, and each Engine takes the rows of its own prompts.

    Every model call holds ``batch_size`` images (a short batch is padded with its last image): the model's
    float sums depend on the shape of the call, never on the other images in it, so an image's labels are
    the same bytes whichever images share its batch, and a resumed run writes what an uninterrupted one does.
    """

    def __init__(self, segmenter: Segmenter) -> None:
        self.segmenter = segmenter
        self.batch_size = 1  # `use` sets the Engines' own
        self.prompts: list = []
        self._keys: list[str] = []
        self._rows: dict[int, tuple[Any, Any]] = {}  # id(image) -> (the image, held so the id stays its own; 1xPxhxw)
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.segmenter, name)

    def use(self, engines: Sequence[Engine]) -> None:
        """Compute the prompts and negatives of all these engines together, each prompt once, in calls of
        the Engines' batch size."""
        found = {}
        for engine in engines:
            for prompt in [*engine.prompts, *engine.negatives]:
                found.setdefault(prompt_key(prompt), prompt)
        self._keys, self.prompts = list(found), list(found.values())
        self.batch_size = max(engine.batch_size for engine in engines)

    def compute(self, images: Sequence) -> None:
        """Run the model once on a batch of images (padded to ``batch_size``) for every prompt; each image's
        logits are kept until `release`."""
        batch = list(images)
        padded = batch + batch[-1:] * (self.batch_size - len(batch))
        logits = self.segmenter.logits(padded, self.prompts)
        with self._lock:
            for index, image in enumerate(batch):
                self._rows[id(image)] = (image, logits[index : index + 1])

    def logits(self, images: Sequence, prompts: Sequence) -> Any:
        """The logits of one image computed by `compute` (what `Engine.maps` asks for, from any thread).

        Returns:
            1xPxhxw logits of ``prompts`` (a torch tensor or a numpy array, as the Segmenter gives).
        """
        with self._lock:
            found = self._rows.get(id(images[0])) if len(images) == 1 else None
        if found is None or found[0] is not images[0]:
            raise ValueError("SharedLogits gives the logits of one image of the batch it computed")
        return found[1][:, [self._keys.index(prompt_key(prompt)) for prompt in prompts]]

    def release(self, image: Any) -> None:
        with self._lock:
            self._rows.pop(id(image), None)


def class_maps(engines: Sequence[Engine], shared: SharedLogits, decoded: DecodedImage) -> Maps:
    """Returns: per class, the (mask, map) that ``clipseg batch`` computes for the image with that class's Engine
    (its logits computed by `SharedLogits.compute`, then released)."""
    try:
        return [engine.maps([decoded])[0][0] for engine in engines]
    finally:
        shared.release(decoded.image)


def pipeline(engines: Sequence[Engine], shared: SharedLogits, tasks: Iterable[Task], source: Callable[[Task], Any],
             write: Callable[[Task, DecodedImage, Maps], Any], failed: Callable[[Task, Exception], Any]) -> Iterator:
    """Label the tasks: decode ahead, run the classes' Engines on batches, write behind.

    Arguments:
        source: a task's image file.
        write: writes one image's files from its maps (in a worker thread); its return value is yielded.
        failed: the value yielded for a task whose image did not decode.

    Returns:
        An iterator of the values of `write` and `failed`, in task order.
    """
    first = engines[0]
    pool = ThreadPoolExecutor(first.workers, thread_name_prefix="clipseg-label")
    depth, in_flight = 2 * first.batch_size + first.workers, first.batch_size + first.workers
    todo = iter(tasks)
    decoding: deque[tuple[Task, Future]] = deque()
    writing: deque[Future] = deque()
    try:
        while True:
            while len(decoding) < depth and (task := next(todo, None)) is not None:
                decoding.append((task, pool.submit(open_image, source(task), max_pixels=first.max_pixels,
                                                   min_side=first.min_side)))
            if not decoding and not writing:
                return
            batch = []
            while decoding and len(batch) < first.batch_size:
                task, future = decoding.popleft()
                try:
                    batch.append((task, future.result()))
                except Exception as exc:  # one bad image never stops the run
                    writing.append(_resolved(failed(task, exc)))
            if batch:  # the model here; each image's maps, mask steps and files in a worker
                shared.compute([decoded.image for _, decoded in batch])
                writing.extend(pool.submit(_maps_then, write, engines, shared, task, decoded)
                               for task, decoded in batch)
            while writing and (writing[0].done() or len(writing) > in_flight or not decoding):
                yield writing.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _maps_then(write: Callable[[Task, DecodedImage, Maps], Any], engines: Sequence[Engine], shared: SharedLogits,
               task: Task, decoded: DecodedImage) -> Any:
    return write(task, decoded, class_maps(engines, shared, decoded))


def _resolved(value: Any) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future
