"""Per-frame masks and maps of a video, in memory: the one path that both the API and ``clipseg video`` take.

Frames are decoded ahead in a thread (a bounded queue), run through the `Engine`'s mask maths in
batches (`Engine.maps`: the masks ``clipseg segment`` writes for the same frame saved as a PNG), and,
with ``--smooth``, the maps are averaged over time before the mask steps::

    from clipseg_cli import Job, Segmenter
    from clipseg_cli.video import video_frames
    seg = Segmenter.from_pretrained("CIDAS/clipseg-rd64-refined")
    for frame in video_frames(seg, "clip.mp4", Job(["dog"])):
        print(frame.index, frame.seconds, frame.maps[0].mean())  # HxW float32 probabilities, upright
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from clipseg_cli.imaging.decode import open_image
from clipseg_cli.postprocess import PostProcess, mask_and_map
from clipseg_cli.video.reading import SourceFrame, VideoError, VideoInfo, probe, read_frames
from clipseg_cli.video.smoothing import Smoother

if TYPE_CHECKING:
    from clipseg_cli.predictor import Segmenter
    from clipseg_cli.run.engine import Engine
    from clipseg_cli.run.job import Job

T = TypeVar("T")
_END = object()


@dataclass
class FrameMaps:
    """One frame's results, one entry per target (prompt, or the union), all upright HxW.

    frame: the decoded frame (its index, timestamp, RGB pixels).
    masks: bool masks M. maps: float32 maps m (None where nothing needed one).
    """

    frame: SourceFrame
    masks: list[np.ndarray]
    maps: list[np.ndarray | None]
    time_base: Fraction = Fraction(1)

    @property
    def index(self) -> int:
        return self.frame.index

    @property
    def seconds(self) -> float:
        return self.frame.seconds(self.time_base)


def video_frames(segmenter: Segmenter, source: str | Path, job: Job, *, smooth: float = 0.0) -> Iterator[FrameMaps]:
    """Segment a video's frames in memory: one `FrameMaps` per frame, in order, with every map m.

    Arguments:
        segmenter: the loaded model.
        source: the video file.
        job: the prompts and mask steps (its output files are not written).
        smooth: ``--smooth``, the weight of the past in the maps' moving average (0: off).

    Returns:
        An iterator; it raises `VideoError` (one line) for a file it cannot read to the end.
    """
    info = probe(Path(source), job.pipeline.max_pixels)
    engine, post = frames_engine(segmenter, job, smooth, maps=True)
    return frame_maps(engine, info, smoother=Smoother(smooth) if smooth else None, post=post)


def frames_engine(segmenter: Segmenter, job: Job, smooth: float, *, maps: bool, refiner=None,
                  items=()) -> tuple[Engine, PostProcess | None]:
    """The Engine whose `Engine.maps` gives what a video needs, and the mask steps left to do after smoothing.

    Without smoothing it is the job's own Engine (masks exactly as ``clipseg segment``'s). With it, the
    Engine stops at the probability (after the prompt algebra and the refinement); the returned mask
    steps are applied to the smoothed map.

    Arguments:
        maps: give every map m (else only where the job's outputs need them).
        refiner: from `Job.refiner` (default: loaded by the engine).
        items: the work items (their files are protected from being written).
    """
    post = None
    if smooth:
        post = job.plan.post
        plan = replace(job.plan, soft=True, post=PostProcess(threshold=post.threshold))  # m = the probability
        job = replace(job, plan=plan)
    if maps:
        job = replace(job, pipeline=replace(job.pipeline, stats=True))
    engine = job.engine(segmenter, items, refiner=refiner)
    segmenter.embed(engine.prompts + engine.negatives)
    return engine, post


def frame_maps(engine: Engine, info: VideoInfo, *, smoother: Smoother | None = None,
               post: PostProcess | None = None, start: int = 0) -> Iterator[FrameMaps]:
    """The masks and maps of a video's frames from ``start`` on, a model batch at a time.

    Arguments:
        engine: from `frames_engine`.
        smoother: averages the maps over time (then ``post`` makes the masks).
        start: the first frame to segment (the earlier ones are decoded only).

    Returns:
        An iterator of one `FrameMaps` per frame. A video that stops decoding part way raises
        `BrokenVideo` after the frames before the break were given.
    """
    batch: list[SourceFrame] = []
    failure = None
    try:
        for frame in ahead(read_frames(info, start=start), 2 * engine.batch_size):
            batch.append(frame)
            if len(batch) == engine.batch_size:
                yield from _batch_maps(engine, batch, info.time_base, smoother, post)
                batch = []
    except VideoError as exc:  # the frames read before it are still done
        failure = exc
    yield from _batch_maps(engine, batch, info.time_base, smoother, post)
    if failure is not None:
        raise failure


def _batch_maps(engine: Engine, frames: list[SourceFrame], time_base: Fraction, smoother: Smoother | None,
                post: PostProcess | None) -> Iterator[FrameMaps]:
    """One model batch: the frames' masks and maps (smoothed, then masked by ``post``, with a smoother)."""
    if not frames:
        return
    decoded = [open_image(frame.rgb, max_pixels=engine.max_pixels) for frame in frames]
    for frame, found in zip(frames, engine.maps(decoded), strict=True):
        if smoother is None:
            masks, maps = [mask for mask, _ in found], [soft for _, soft in found]
        else:
            smoothed = smoother(frame.index, frame.rgb, [soft for _, soft in found])
            masks, maps = map(list, zip(*(mask_and_map(m, post) for m in smoothed), strict=True))
        yield FrameMaps(frame, masks, maps, time_base)


def ahead(items: Iterator[T], depth: int) -> Iterator[T]:
    """``items`` produced in a thread, at most ``depth`` ahead of the consumer; its errors are raised here, in order.

    Closing the returned iterator (or an error in the consumer) stops the thread.
    """
    waiting: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(entry: tuple[object, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                waiting.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((_END, None))
        except BaseException as exc:  # handed to the consumer, which raises it
            put((None, exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="clipseg-video-decode", daemon=True)
    thread.start()
    try:
        while True:
            item, error = waiting.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        thread.join()
