"""Read a video with PyAV: what its streams are, and its frames as upright RGB arrays with their timestamps.

Frames are converted to RGB as PyAV's ``frame.to_ndarray(format="rgb24")`` converts them (FFmpeg's
swscale, the stream's own colour matrix and range), so a frame saved as a PNG is what the model saw.
A display rotation (a phone's portrait video) is applied as players apply it: the model sees the
picture upright, and the outputs are stored as the source is, with the same rotation tag.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from clipseg_cli.errors import ClipSegError


class VideoError(ClipSegError):
    """An input video cannot be used (not a video, no video stream, no frames, too large, ...): one line."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class BrokenVideo(VideoError):
    """The video stops decoding part way (a truncated or damaged file): the frames before ``frame`` are good."""

    def __init__(self, path: str | os.PathLike[str], frame: int, seconds: float | None, why: str) -> None:
        where = f"frame {frame}" + (f" ({seconds:.3f} s)" if seconds is not None else "")
        super().__init__(path, f"truncated or damaged: decoding stopped at {where}: {why}; "
                               f"the {frame} frame(s) before it were done")
        self.frame = frame


@dataclass(frozen=True)
class VideoInfo:
    """What a video file holds, from its header (no frame decoded).

    width, height: the stored frame size (before rotation).
    rotation: degrees counter-clockwise that players turn the picture (0, 90, 180, 270).
    time_base: of the video stream's timestamps.
    rate: its average frame rate (None where the container does not say).
    frames: its frame count where the container says it, else an estimate from the duration, else None.
    duration: in seconds, where known.
    audio: indices of the audio streams.
    """

    path: Path
    width: int
    height: int
    rotation: int
    time_base: Fraction
    rate: Fraction | None
    frames: int | None
    duration: float | None
    audio: tuple[int, ...]
    codec: str


@dataclass(frozen=True)
class SourceFrame:
    """One decoded frame: its index, timestamp (``pts`` in ``time_base``), duration and upright RGB pixels."""

    index: int
    pts: int
    duration: int
    rgb: np.ndarray  # HxWx3 uint8, upright

    def seconds(self, time_base: Fraction) -> float:
        return float(self.pts * time_base)


def probe(path: Path, max_pixels: int) -> VideoInfo:
    """Open a video's header and check it can be segmented.

    Raises:
        VideoError: not a video, no video stream, or frames over ``max_pixels``.
    """
    import av

    container = _open(path)
    with container:
        if not container.streams.video:
            kinds = sorted({stream.type for stream in container.streams}) or ["none"]
            raise VideoError(path, f"no video stream (streams: {', '.join(kinds)})")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        _check_pixels(path, (width, height), max_pixels)
        time_base = stream.time_base or Fraction(1, av.time_base)
        duration = (float(stream.duration * time_base) if stream.duration
                    else container.duration / av.time_base if container.duration else None)
        rate = stream.average_rate or stream.guessed_rate
        frames = stream.frames or (round(duration * rate) if duration and rate else None)
        audio = tuple(s.index for s in container.streams.audio)
        rotation, first = _first_frame(container)
        if first is not None and first != (width, height):  # a raw stream's header tells its last size
            width, height = first
            _check_pixels(path, first, max_pixels)
        return VideoInfo(Path(path), width, height, rotation, time_base, rate, frames, duration, audio,
                         stream.codec_context.name)


def _check_pixels(path: Path, size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise VideoError(path, f"frames are {width}x{height} = {width * height} pixels, over the limit of "
                               f"{max_pixels} (raise it with --max-pixels)")


def read_frames(info: VideoInfo, *, start: int = 0) -> Iterator[SourceFrame]:
    """The video's frames in presentation order, upright RGB; the first ``start`` are decoded but not converted.

    Raises:
        VideoError: no frame at all, or the frame size changes mid-stream.
        BrokenVideo: decoding fails part way (the frames before it were yielded).
    """
    import av

    container = _open(info.path)
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        index, last_end = 0, None
        packets = container.demux(stream)  # its last packet is empty: it flushes the decoder
        while True:
            try:
                packet = next(packets, None)
                decoded = stream.decode(packet) if packet is not None else []
            except av.error.EOFError:
                break
            except av.error.FFmpegError as exc:
                raise BrokenVideo(info.path, index, float(last_end * info.time_base) if last_end else None,
                                  _describe(exc)) from None
            for frame in decoded:
                if (frame.width, frame.height) != (info.width, info.height):
                    raise VideoError(info.path, f"the frame size changes at frame {index} ({info.width}x"
                                                f"{info.height} -> {frame.width}x{frame.height}); split the "
                                                "video where it changes")
                pts = frame.pts if frame.pts is not None else (last_end or 0)
                duration = frame.duration or _frame_step(info)
                if index >= start:
                    rgb = upright(frame.to_ndarray(format="rgb24"), info.rotation)
                    yield SourceFrame(index, pts, duration, rgb)
                index, last_end = index + 1, pts + duration
            if packet is None:
                break
        if index == 0:
            raise VideoError(info.path, "no frames: the video stream is empty")
        _check_complete(info, index, last_end)


def _check_complete(info: VideoInfo, count: int, end: int | None) -> None:
    """Refuse a video that ended before its header said (a file cut short): its frames were done."""
    if info.duration is None or end is None:
        return
    seconds = float(end * info.time_base)
    missing = info.duration - seconds
    step = float(_frame_step(info) * info.time_base)
    if missing > max(2 * step, 0.1):  # the header said longer: the file was cut
        raise BrokenVideo(info.path, count, seconds, f"the file ends at {seconds:.3f} s of {info.duration:.3f} s")


def upright(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """Returns: the HxWxC (or HxW) array turned as players show it (``rotation`` degrees counter-clockwise)."""
    turns = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


def stored(array: np.ndarray, rotation: int) -> np.ndarray:
    """Returns: an upright HxW(xC) array turned back to the orientation the source stores (`upright`'s inverse)."""
    turns = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(array, -turns)) if turns else array


def _frame_step(info: VideoInfo) -> int:
    """Returns: one frame's duration in the stream's time base (from the frame rate; 1 when unknown)."""
    if info.rate:
        return max(1, round(1 / (info.rate * info.time_base)))
    return 1


def _first_frame(container) -> tuple[int, tuple[int, int] | None]:
    """The display rotation (degrees counter-clockwise: 0, 90, 180 or 270) and the size of the first frame.

    FFmpeg attaches the stream's display matrix to each decoded frame; the first frame tells.

    Returns:
        (rotation, (width, height)), the size None when no frame decodes (reading the frames says why).
    """
    import av

    try:
        frame = next(container.decode(video=0), None)
    except av.error.FFmpegError:
        return 0, None
    if frame is None:
        return 0, None
    degrees = round(getattr(frame, "rotation", 0) or 0)
    return (round(degrees / 90) * 90) % 360, (frame.width, frame.height)


def _open(path: Path):
    import av

    if not os.path.exists(path):
        raise VideoError(path, "no such file")
    if os.path.isdir(path):
        raise VideoError(path, "is a folder, not a video file")
    try:
        return av.open(os.fspath(path), metadata_errors="replace")
    except av.error.FFmpegError as exc:
        raise VideoError(path, f"not a video file ({_describe(exc)})") from None


def _describe(exc: BaseException) -> str:
    text = " ".join(str(getattr(exc, "strerror", None) or exc).split())
    return text or type(exc).__name__
