"""Join a video output's chunks into its final file, with the source's timestamps, rotation and sound.

The chunks' packets are copied (no second encoding) and given the source frames' own timestamps
and durations, so variable frame rates survive; the source's audio streams are copied as they are,
or re-encoded where the container cannot hold them (AAC for MP4 and QuickTime, Opus for WebM).
The file is written in a temporary folder beside its destination and moved into place complete.
Its fingerprint record is the container's ``clipseg`` tag (see `read_video_record`).
"""

from __future__ import annotations

import heapq
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path

from clipseg_cli.fingerprint import PNG_KEY
from clipseg_cli.imaging.writing import temp_folder
from clipseg_cli.video.encoding import Codec
from clipseg_cli.video.reading import VideoInfo

RECORD_TAG = PNG_KEY  # the container tag that holds the fingerprint record
# Audio codecs each container holds as they are; others are re-encoded to the second entry.
_AUDIO = {
    "matroska": (None, None),  # anything
    "mp4": (frozenset({"aac", "mp3", "alac", "ac3", "eac3", "opus", "flac"}), "aac"),
    "mov": (frozenset({"aac", "mp3", "alac", "ac3", "eac3", "pcm_s16le", "pcm_s16be", "pcm_s24le", "pcm_f32le"}),
            "aac"),
    "webm": (frozenset({"opus", "vorbis"}), "libopus"),
}
_MOV_FLAGS = {"movflags": "+faststart+use_metadata_tags"}  # the index first (plays while loading); our tag kept


def assemble(path: Path, chunks: Sequence[Path], frames: Sequence[tuple[int, int]], info: VideoInfo, codec: Codec,
             record: str, *, audio: bool) -> None:
    """Write one output video from its chunk files, atomically.

    Arguments:
        path: the final file.
        chunks: the chunk files in order (`ChunkEncoder`), one packet per frame.
        frames: (pts, duration) of every source frame, in the source stream's time base.
        record: the fingerprint record, stored as the container's ``clipseg`` tag.
        audio: copy the source's audio streams.
    """
    import av

    folder, handles = temp_folder(path), []
    try:
        temp = folder / f"out.{codec.suffix}"
        options = _MOV_FLAGS if codec.container in ("mp4", "mov") else {}
        with av.open(os.fspath(temp), "w", format=codec.container, options=options) as out:
            out.metadata[RECORD_TAG] = record
            with av.open(os.fspath(chunks[0])) as first:
                video = out.add_stream_from_template(first.streams.video[0])
            video.time_base = info.time_base
            if info.rotation:
                video.set_display_rotation(info.rotation)
            if codec.pixels.startswith("yuva") and codec.container == "webm":
                video.metadata["alpha_mode"] = "1"  # browsers read VP9's alpha only with this flag
            sources = [_video_packets(chunks, frames, info.time_base, video)]
            for index in info.audio if audio else ():  # every stream is added before the first packet
                handles.append(av.open(os.fspath(info.path)))
                sources.append(_audio_packets(handles[-1], index, out, codec.container))
            for _, _, packet in heapq.merge(*sources, key=lambda entry: entry[:2]):
                out.mux(packet)
        try:
            os.replace(temp, path)
        except OSError as exc:  # about the destination: name it, not the temporary file
            raise OSError(exc.errno, exc.strerror or str(exc), os.fspath(path)) from exc
    finally:
        for handle in handles:
            handle.close()
        shutil.rmtree(folder, ignore_errors=True)


def _video_packets(chunks: Sequence[Path], frames: Sequence[tuple[int, int]], time_base: Fraction,
                   stream) -> Iterator[tuple[float, int, object]]:
    """Yields (seconds, 0, packet) for each frame of the chunks, timed as the source frame it shows."""
    import av

    index = 0
    for chunk in chunks:
        with av.open(os.fspath(chunk)) as container:
            for packet in container.demux(video=0):
                if packet.size == 0:  # the demuxer's end-of-stream marker
                    continue
                pts, duration = frames[index]
                packet.stream, packet.time_base = stream, time_base
                packet.pts = packet.dts = pts
                packet.duration = duration
                index += 1
                yield float(pts * time_base), 0, packet
    if index != len(frames):
        raise RuntimeError(f"the chunks hold {index} frames, the source {len(frames)}")


def _audio_packets(source, index: int, out, container: str) -> Iterator[tuple[float, int, object]]:
    """Add one audio stream of the source to ``out`` now; the iterator yields (seconds, 1, packet) for it,
    copied, or re-encoded where ``container`` cannot hold its codec."""
    import av

    stream = source.streams[index]
    allowed, fallback = _AUDIO[container]
    if allowed is None or stream.codec_context.name in allowed:
        return _copied(source, stream, out.add_stream_from_template(stream))
    rate = 48000 if fallback == "libopus" else stream.codec_context.sample_rate
    target = out.add_stream(fallback, rate=rate)
    layout = stream.codec_context.layout.name if stream.codec_context.layout else "stereo"
    target.layout = layout
    resample = av.AudioResampler(format=target.codec_context.codec.audio_formats[0].name, layout=layout, rate=rate)
    return _reencoded(source, stream, target, resample)


def _copied(source, stream, target) -> Iterator[tuple[float, int, object]]:
    for packet in source.demux(stream):
        if packet.dts is None or packet.size == 0:
            continue
        packet.stream = target
        yield float(packet.pts * packet.time_base) if packet.pts is not None else 0.0, 1, packet


def _reencoded(source, stream, target, resample) -> Iterator[tuple[float, int, object]]:
    for frame in source.decode(stream):
        frame.pts = None
        for converted in resample.resample(frame):
            yield from _timed(target.encode(converted))
    for converted in resample.resample(None):
        yield from _timed(target.encode(converted))
    yield from _timed(target.encode(None))


def _timed(packets) -> Iterator[tuple[float, int, object]]:
    for packet in packets:
        yield (float(packet.pts * packet.time_base) if packet.pts is not None else 0.0), 1, packet


def read_video_record(path: Path) -> dict | None:
    """The fingerprint record of a video we wrote, from its container's tags (no frame decoded).

    Returns:
        The record, or None when the file has none (another tool's, not a video).
    """
    import av

    try:
        with av.open(os.fspath(path), metadata_errors="replace") as container:
            tags = {key.lower(): value for key, value in container.metadata.items()}
    except av.error.FFmpegError:
        return None
    try:
        record = json.loads(tags.get(RECORD_TAG, ""))
    except ValueError:
        return None
    return record if isinstance(record, dict) else None
