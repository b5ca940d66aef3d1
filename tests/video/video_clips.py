"""Tiny test clips made with PyAV: moving shapes, a sine-wave sound, any frame rate, rotation, VFR, odd sizes."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

NTSC = Fraction(24000, 1001)


def picture(index: int, size: tuple[int, int], *, still: bool = False, seed: int = 0) -> np.ndarray:
    """An HxWx3 frame: a dark gradient, a bright square that moves right and a disc that moves down."""
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width]
    step = 0 if still else index
    frame = np.zeros((height, width, 3), np.uint8)
    frame[..., 0] = (xs * 120 // max(1, width - 1)).astype(np.uint8)
    frame[..., 2] = (ys * 90 // max(1, height - 1)).astype(np.uint8)
    left = (4 + 3 * step) % max(1, width - 12)
    frame[8:24, left : left + 14] = (250, 240, 60)
    cy, cx = (10 + 2 * step) % max(1, height - 8) + 4, width * 2 // 3
    frame[(ys - cy) ** 2 + (xs - cx) ** 2 <= 36] = (40, 200, 250)
    return frame


def make_clip(path: Path, *, size: tuple[int, int] = (64, 48), frames: int = 12, rate: Fraction = NTSC,
              audio: bool = True, rotation: int = 0, times: list[int] | None = None, codec: str = "libx264",
              noise: float = 0.0, still: bool = False, seed: int = 0) -> Path:
    """Write a clip; the container follows the suffix (.mp4 with its index first, .mkv, .mov).

    Arguments:
        times: each frame's pts in 1/rate.denominator... units of the time base 1/90000 (VFR); default even.
        noise: the standard deviation of per-frame sensor noise added to every pixel (grey levels).
        still: the shapes stay put (for the flicker measurement).
    """
    options = {"movflags": "+faststart"} if path.suffix in (".mp4", ".mov") else {}
    rng = np.random.default_rng(seed)
    time_base = Fraction(1, 90000)
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream(codec, rate=rate, options={"bf": "0"} if codec == "libx264" else {})
        width, height = size
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"  # 4:2:0 needs even sizes
        stream.time_base = time_base
        if rotation:
            stream.set_display_rotation(rotation)
        sound = container.add_stream("aac", rate=48000) if audio else None
        if sound is not None:
            sound.layout = "mono"
        step = round(1 / (rate * time_base))
        stamps = times if times is not None else [i * step for i in range(frames)]
        for index, pts in enumerate(stamps):
            pixels = picture(index, size, still=still).astype(np.float32)
            if noise:
                pixels += rng.normal(0, noise, pixels.shape)
            frame = av.VideoFrame.from_ndarray(np.clip(pixels, 0, 255).astype(np.uint8), format="rgb24")
            frame.pts, frame.time_base = pts, time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
        if sound is not None:
            seconds = float((stamps[-1] + step) * time_base)
            t = np.arange(int(48000 * seconds)) / 48000
            samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
            chunk = 1024
            for start in range(0, samples.shape[1], chunk):
                piece = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start : start + chunk]),
                                                   format="fltp", layout="mono")
                piece.sample_rate, piece.pts = 48000, start
                for packet in sound.encode(piece):
                    container.mux(packet)
            for packet in sound.encode(None):
                container.mux(packet)
    return path


def decoded_frames(path: Path, fmt: str = "rgb24", codec: str | None = None) -> list[np.ndarray]:
    """Every frame of a file's first video stream as arrays (stored orientation)."""
    with av.open(str(path)) as container:
        if codec is None:
            return [frame.to_ndarray(format=fmt) for frame in container.decode(video=0)]
        context = av.CodecContext.create(codec, "r")
        frames = [frame for packet in container.demux(video=0) for frame in context.decode(packet)]
        return [frame.to_ndarray(format=fmt) for frame in frames]


def packet_times(path: Path, kind: str = "video") -> list[float]:
    """The presentation times (seconds) of one stream kind's packets, sorted."""
    with av.open(str(path)) as container:
        stream = getattr(container.streams, kind)[0]
        return sorted(float(p.pts * p.time_base) for p in container.demux(stream) if p.pts is not None and p.size)


def stream_facts(path: Path) -> dict:
    """What a player reads from a file's header: size, rate, rotation, audio parameters, duration."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        first = next(container.decode(video=0))
        facts = {"size": (video.codec_context.width, video.codec_context.height), "rate": video.average_rate,
                 "rotation": round(first.rotation or 0),
                 "duration": float(video.duration * video.time_base) if video.duration else None}
        if container.streams.audio:
            sound = container.streams.audio[0].codec_context
            facts["audio"] = (sound.name, sound.sample_rate, sound.channels)
        return facts
