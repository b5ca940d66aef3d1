"""``clipseg video``'s run: per video, skip or segment every frame, encode behind in a thread, join the chunks.

The order, once for every entry point: check the job and the prompts; per video read its header
(`probe`) and decide each (video, prompt) from the outputs' fingerprints (before any model loads);
then load the model once, segment the frames (`frame_maps`), encode each output a chunk at a time
in a worker thread (a bounded queue of frames waiting), and join each output's chunks into its
final file, atomically. A killed run leaves whole chunks; the rerun takes them up (`ChunkStore`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Protocol

from clipseg_cli.errors import ClipSegError
from clipseg_cli.fingerprint import content_sha256
from clipseg_cli.fingerprint import stale_reason as png_stale_reason
from clipseg_cli.predictor import ModelSpec, Segmenter
from clipseg_cli.run.inputs import WorkItem
from clipseg_cli.run.targets import decode_min_side, recorded_settings
from clipseg_cli.video.assembling import assemble
from clipseg_cli.video.chunks import ChunkStore
from clipseg_cli.video.encoding import ChunkEncoder, codec_of, paint
from clipseg_cli.video.files import output_path, work_folder
from clipseg_cli.video.frames import FrameMaps, frame_maps, frames_engine
from clipseg_cli.video.png_frames import FIRST, frames_folder, write_png_frames
from clipseg_cli.video.reading import BrokenVideo, VideoError, VideoInfo, probe
from clipseg_cli.video.records import Output, Recorder, stale_reason
from clipseg_cli.video.smoothing import PULL, SCENE_CUT, Smoother

if TYPE_CHECKING:
    from clipseg_cli.run.engine import Engine
    from clipseg_cli.run.job import Job

CHUNK_FRAMES = 240  # frames per resumable chunk (10 s at 24 fps); rounded up to a multiple of the batch size


@dataclass(frozen=True, kw_only=True)
class VideoOptions:
    """What ``clipseg video`` adds to a `Job`.

    smooth: ``--smooth``, the weight of the past in each map's moving average (0: off).
    cutout_format: ``--cutout-format``, mov (ProRes 4444) or webm (VP9 with alpha).
    audio: copy the sound into the overlay and the cut-out.
    chunk_frames: frames per resumable chunk.
    png_frames: also write each output as a PNG sequence (`clipseg_cli.video.png_frames`).
    """

    smooth: float = 0.0
    cutout_format: str = "mov"
    audio: bool = True
    chunk_frames: int = CHUNK_FRAMES
    png_frames: bool = False

    def recorded(self) -> dict[str, object]:
        smoothing = {"smooth": self.smooth, "pull": PULL, "scene_cut": SCENE_CUT} if self.smooth else {"smooth": 0}
        return {**smoothing, "audio": self.audio}


@dataclass
class VideoResult:
    """What happened to one (video, prompt): the line ``--json`` prints."""

    video: str
    prompt: str
    status: str  # ok, skipped or failed
    mask: str | None = None
    overlay: str | None = None
    cutout: str | None = None
    frames: int | None = None
    error: str | None = None
    reason: str | None = None  # why an existing output was redone
    png_frames: dict[str, str] | None = None  # per kind, the PNG sequence's folder (--png-frames)

    def to_json(self) -> dict:
        record = asdict(self)
        if record["png_frames"] is None:
            del record["png_frames"]
        return record


class Progress(Protocol):
    """A progress bar (tqdm's interface): `update` by frames done, `close` at the end of the video."""

    def update(self, n: int = 1) -> object: ...

    def close(self) -> None: ...


def run_videos(job: Job, model: ModelSpec | Segmenter, items: Sequence[WorkItem],
               options: VideoOptions = VideoOptions(), *,
               progress: Callable[[WorkItem, VideoInfo], Progress] | None = None,
               started: Callable[[str], None] | None = None) -> Iterator[VideoResult]:
    """Segment videos and write their outputs, as ``clipseg video`` does.

    Arguments:
        job: the prompts, output plan and mask steps (``--overlay``, ``--cutout``, ``--soft``, ...).
        model: a loaded Segmenter, or the spec of one (loaded at the first video with work to do).
        items: the videos and where their outputs go (`clipseg_cli.video.files.collect_videos`).
        progress: makes a bar per video.
        started: told what runs (device, precision, batch size) once the model is ready.

    Returns:
        An iterator of one `VideoResult` per (video, target), video by video.

    Raises:
        ClipSegError: a set-up error (bad prompts, an unsupported option), before anything runs.
    """
    if job.plan.overlay_combined:
        raise ClipSegError("--overlay-combined is for images; videos get one overlay per prompt")
    job.check(items)
    prompts = job.prompts()
    targets = job.targets(items, prompts=prompts)
    codecs = {kind: codec_of(kind, options.cutout_format) for kind in job.plan.kinds}
    Smoother(options.smooth)  # refuses a bad strength now
    return _Run(job, model, targets, codecs, options, progress, started).results(items)


class _Run:
    """The state of one run over many videos: the model and engine, loaded at most once."""

    def __init__(self, job, model, targets, codecs, options, progress, started) -> None:
        self.job, self.model, self.targets, self.codecs, self.options = job, model, targets, codecs, options
        self.progress, self.started = progress, started
        self.engine: Engine | None = None
        self.recorder: Recorder | None = None
        if isinstance(model, Segmenter):
            self._ready(model, owned=False)
        elif job.refine == "none":  # what the model would record, without loading it
            identity, fp32, size = model.expected_identity(progress=progress is not None)
            settings = recorded_settings(job.plan, decode_min_side(job.plan, fp32, False, size), None)
            self.recorder = Recorder(job.plan, identity, settings, options.recorded())

    def results(self, items: Sequence[WorkItem]) -> Iterator[VideoResult]:
        for item in items:
            yield from self.video(item)

    def video(self, item: WorkItem) -> list[VideoResult]:
        """Decide, and where needed segment and write, one video."""
        try:
            info = probe(item.source, self.job.pipeline.max_pixels)
            digest = content_sha256(item.source)
        except (VideoError, OSError) as exc:
            return self._failed(item, exc)
        decided = self._decide(item, digest) if self.recorder is not None else None
        if decided is not None and all(result.status == "skipped" for result, _ in decided):
            return [result for result, _ in decided]
        if self.engine is None:
            self._ready(self.model.load(progress=self.progress is not None), owned=True)
            decided = self._decide(item, digest)
        pending = [output for result, outputs in decided if result.status == "pending" for output in outputs]
        results = [result for result, _ in decided]
        if not pending:  # skipped, or refused
            return results
        bar = self.progress(item, info) if self.progress is not None else None
        try:
            frames, failure = self._write(item, info, digest, pending, bar)
        except VideoError as exc:  # no frame, or a frame size that changes: nothing to resume
            ChunkStore(work_folder(item), "", []).remove()
            return self._failed(item, exc)
        except OSError as exc:  # a full disk, a folder we may not write: the finished chunks stay for the rerun
            where = exc.filename or item.output_dir
            return self._failed(item, ClipSegError(f"cannot write {where}: {exc.strerror or exc}"))
        finally:
            if bar is not None:
                bar.close()
        for result in results:
            if result.status == "pending":
                result.status, result.frames = ("failed", frames) if failure else ("ok", frames)
                result.error = " ".join(str(failure).split()) if failure else None
        return results

    def _ready(self, segmenter: Segmenter, *, owned: bool) -> None:
        """Build the engine for the loaded model (its text tower freed when the run owns it)."""
        job, options = self.job, self.options
        refiner = job.refiner(segmenter, progress=self.progress is not None)
        self.engine, self.post = frames_engine(segmenter, job, options.smooth, maps=False, refiner=refiner,
                                               items=[])
        if owned:
            segmenter.drop_unused_layers()
        engine = self.engine
        settings = recorded_settings(job.plan, engine.min_side, refiner.name if refiner is not None else None)
        self.recorder = Recorder(job.plan, segmenter.identity, settings, options.recorded())
        if self.started is not None:
            self.started(f"device {segmenter.device_type}, precision {segmenter.precision} on {segmenter.backend}, "
                         f"batch size {engine.batch_size}")

    def _decide(self, item: WorkItem, digest: str) -> list[tuple[VideoResult, list[Output]]]:
        """Per target: its result ('skipped' where every file exists with a matching record, else 'pending')
        and its outputs."""
        decided = []
        for index, target in enumerate(self.targets.targets):
            outputs = [Output(index, target, kind, output_path(item, target.label, kind, codec.suffix), codec)
                       for kind, codec in self.codecs.items()]
            paths = {output.kind: str(output.path) for output in outputs}
            result = VideoResult(str(item.source), target.prompt, "pending", **paths)
            if self.options.png_frames:
                result.png_frames = {output.kind: str(frames_folder(output.path)) for output in outputs}
            clash = next((output.path for output in outputs if output.path in self.targets.protected), None)
            if clash is not None:
                result.status, result.error = "failed", f"{item.source}: its output {clash} would overwrite an input"
                decided.append((result, []))
                continue
            if not self.job.force:
                reasons = [self._stale(output, digest) for output in outputs]
                if all(reason is None for reason in reasons):
                    result.status = "skipped"
                result.reason = next((why for why in reasons if why not in (None, "missing")), None)
            decided.append((result, outputs))
        return decided

    def _stale(self, output: Output, digest: str) -> str | None:
        """Returns: why one output (and its PNG sequence, when asked) must be redone; None when it is up to date."""
        record = self.recorder.record(output, digest)
        if not output.path.exists():
            return "missing"
        reason = stale_reason(output.path, record)
        if reason is None and self.options.png_frames:
            first = frames_folder(output.path) / FIRST
            return png_stale_reason(first, record) if first.exists() else "missing"
        return reason

    def _write(self, item: WorkItem, info: VideoInfo, digest: str, outputs: list[Output],
               bar: Progress | None) -> tuple[int, BrokenVideo | None]:
        """Segment the video and write ``outputs``, resuming from finished chunks.

        Returns:
            (frames done, the break where the video stopped decoding part way or None).
        """
        engine, options = self.engine, self.options
        chunk = -(-options.chunk_frames // engine.batch_size) * engine.batch_size
        records = [self.recorder.record(output, digest) for output in outputs]
        item.output_dir.mkdir(parents=True, exist_ok=True)
        store = ChunkStore(work_folder(item), ChunkStore.key_of(records, chunk, engine.batch_size),
                           [(output.target.label, output.kind) for output in outputs])
        done = store.open()
        smoother = Smoother(options.smooth) if options.smooth else None
        if smoother is not None and done:
            smoother.restore(store.state(len(done) - 1))
        if bar is not None and done:
            bar.update(sum(len(frames) for frames in done))
        writer = _ChunkWriter(store, outputs, info, self.job.plan, len(done))
        failure = _encode_behind(frame_maps(engine, info, smoother=smoother, post=self.post, start=len(done) * chunk),
                                 writer, chunk, smoother, bar)
        frames = [frame for chunk_frames in done + writer.finished for frame in chunk_frames]
        if not frames:
            store.remove()
            raise failure or VideoError(item.source, "no frames")
        for output in outputs:
            chunks = [store.path(number, output.target.label, output.kind) for number in range(writer.chunk)]
            record = self.recorder.record(output, digest, complete=failure is None)
            assemble(output.path, chunks, frames, info, output.codec, record,
                     audio=options.audio and output.kind != "mask")
            if options.png_frames:
                write_png_frames(output.path, info, output.codec, record)
        store.remove()
        return len(frames), failure

    def _failed(self, item: WorkItem, exc: Exception) -> list[VideoResult]:
        error = str(exc) if isinstance(exc, ClipSegError) else f"{item.source}: {type(exc).__name__}: {exc}"
        return [VideoResult(str(item.source), target.prompt, "failed", error=" ".join(error.split()))
                for target in self.targets.targets]


def _encode_behind(maps: Iterator[FrameMaps], writer: _ChunkWriter, chunk: int, smoother: Smoother | None,
                   bar: Progress | None) -> BrokenVideo | None:
    """Hand each frame's maps to the writer's thread (at most a few frames waiting) and finish the last chunk.

    Returns:
        The break where the video stopped decoding part way, or None.
    """
    pool = ThreadPoolExecutor(1, thread_name_prefix="clipseg-video-encode")
    waiting: deque[Future] = deque()
    failure = None
    try:
        try:
            for found in maps:
                last = (found.index + 1) % chunk == 0
                state = (smoother.state() if smoother is not None else {}) if last else None
                waiting.append(pool.submit(writer.add, found, state))
                while waiting and (waiting[0].done() or len(waiting) > 4):
                    waiting.popleft().result()
                if bar is not None:
                    bar.update(1)
        except BrokenVideo as exc:
            failure = exc
        waiting.append(pool.submit(writer.finish, smoother.state() if smoother is not None else {}))
        while waiting:
            waiting.popleft().result()
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        writer.abort()
        raise
    finally:
        pool.shutdown(wait=True)
    return failure


class _ChunkWriter:
    """Encodes frames into the current chunk's files (in the writer thread); each full chunk is closed and
    marked finished in the store."""

    def __init__(self, store: ChunkStore, outputs: list[Output], info: VideoInfo, plan, first: int) -> None:
        self.store, self.outputs, self.info, self.plan = store, outputs, info, plan
        self.chunk = first
        self.encoders: list[tuple[Output, ChunkEncoder]] = []
        self.frames: list[tuple[int, int]] = []
        self.finished: list[list[tuple[int, int]]] = []

    def add(self, found: FrameMaps, state: dict | None) -> None:
        """Encode one frame into every output; with a ``state``, the frame ends its chunk."""
        if not self.encoders:
            size, rate = (self.info.width, self.info.height), self.info.rate
            for output in self.outputs:
                path = self.store.path(self.chunk, output.target.label, output.kind)
                self.encoders.append((output, ChunkEncoder(path, output.codec, size, rate)))
        frame = found.frame
        for output, encoder in self.encoders:
            index = output.index
            encoder.add(paint(output.kind, frame.rgb, found.masks[index], found.maps[index], self.plan, index,
                              self.info.rotation))
        self.frames.append((frame.pts, frame.duration))
        if state is not None:
            self.finish(state)

    def finish(self, state: dict) -> None:
        """Close the current chunk's files and mark it finished (nothing when it holds no frame)."""
        if not self.frames:
            return
        for _, encoder in self.encoders:
            encoder.close()
        self.store.finish(self.chunk, self.frames, state)
        self.finished.append(self.frames)
        self.chunk, self.encoders, self.frames = self.chunk + 1, [], []

    def abort(self) -> None:
        """Remove the unfinished chunk's files."""
        for _, encoder in self.encoders:
            encoder.abort()
        self.encoders = []
