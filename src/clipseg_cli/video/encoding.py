"""The video files we write, one codec per output kind, and the frames each shows.

- mask: FFV1 (lossless) in Matroska, 8-bit grey: every frame's mask survives bit for bit; ``--soft``
  writes the map m as grey levels, as for images.
- overlay: H.264 (yuv420p, no B-frames) in MP4, which plays everywhere; an odd width or height is
  padded by one repeated edge column or row, as yuv420p needs even sizes.
- cutout: ProRes 4444 with alpha in QuickTime .mov (what editors import) or VP9 with alpha in WebM
  (what browsers play); RGB is zero under alpha 0, as for image cut-outs.

Frames are encoded a chunk at a time into Matroska files (`ChunkEncoder`), each starting on a key
frame, so that a killed run keeps its finished chunks; `clipseg_cli.video.assembling` joins them.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from clipseg_cli.errors import ClipSegError
from clipseg_cli.imaging.writing import cutout, overlay, palette_color, probability_to_image
from clipseg_cli.run.outputs import OutputPlan
from clipseg_cli.video.reading import stored

CUTOUT_FORMATS = ("mov", "webm")


@dataclass(frozen=True)
class Codec:
    """How one output kind is encoded.

    name: the FFmpeg encoder. pixels: its pixel format. source: the frames' numpy layout (``gray``,
    ``rgb24``, ``rgba``). container: the final file's FFmpeg format; suffix: its file extension.
    options: encoder options. even: the encoder needs an even width and height.
    """

    name: str
    pixels: str
    source: str
    container: str
    suffix: str
    options: dict[str, str] = field(default_factory=dict)
    even: bool = False

    def settings(self) -> dict[str, object]:
        """Returns: what changes the file's pixels, for its fingerprint."""
        return {"codec": self.name, "pixels": self.pixels, **self.options}


CODECS = {
    "mask": Codec("ffv1", "gray", "gray", "matroska", "mkv", {"g": "1"}),
    "overlay": Codec("libx264", "yuv420p", "rgb24", "mp4", "mp4", {"crf": "18", "preset": "veryfast", "bf": "0"},
                     even=True),
    "cutout.mov": Codec("prores_ks", "yuva444p10le", "rgba", "mov", "mov", {"profile": "4444"}),
    "cutout.webm": Codec("libvpx-vp9", "yuva420p", "rgba", "webm", "webm",
                         {"crf": "32", "b": "0", "deadline": "realtime", "cpu-used": "8", "row-mt": "1"}),
}


def codec_of(kind: str, cutout_format: str = "mov") -> Codec:
    """Returns: the codec of an output kind (mask, overlay, cutout)."""
    if kind == "cutout":
        if cutout_format not in CUTOUT_FORMATS:
            raise ClipSegError(f"--cutout-format {cutout_format!r}: choose one of {', '.join(CUTOUT_FORMATS)}")
        return CODECS[f"cutout.{cutout_format}"]
    return CODECS[kind]


def paint(kind: str, rgb: np.ndarray, mask: np.ndarray, soft: np.ndarray | None, plan: OutputPlan, index: int,
          rotation: int) -> np.ndarray:
    """One output frame, as `clipseg_cli.run.outputs.write_outputs` draws the image file of that kind.

    Arguments:
        rgb: HxWx3 uint8, the upright frame.
        mask: HxW bool, the mask M; soft: HxW float32, the map m (needed with ``plan.soft``).
        index: the prompt's place: its overlay colour.
        rotation: the source's display rotation: the frame is stored turned back as the source stores it.

    Returns:
        HxW uint8 (mask), HxWx3 (overlay) or HxWx4 (cut-out) uint8, in the source's stored orientation.
    """
    if kind == "mask":
        grey = np.asarray(probability_to_image(soft)) if plan.soft else np.multiply(mask, np.uint8(255),
                                                                                      dtype=np.uint8)
        return stored(grey, rotation)
    image = Image.fromarray(rgb)
    if kind == "overlay":
        color = plan.overlay_color or palette_color(index)
        return stored(np.asarray(overlay(image, mask, color, plan.overlay_alpha)), rotation)
    made = cutout(image, soft if plan.soft else mask, plan.bg_color)
    return stored(np.asarray(made.convert("RGBA")), rotation)


class ChunkEncoder:
    """Encodes frames of one output kind into one chunk file (Matroska), written under a temporary name.

    `close` finishes the file and moves it into place; `abort` removes it.
    """

    def __init__(self, path: Path, codec: Codec, size: tuple[int, int], rate: Fraction | None) -> None:
        """Arguments:
            path: where the finished chunk goes.
            size: (width, height) of the frames as stored.
            rate: the source's frame rate (None: unknown, 25 assumed for the encoder's rate control).
        """
        import av

        self.path, self.codec = path, codec
        self.temp = path.with_name(f".{path.name}.{os.getpid()}.part")
        width, height = size
        self.pad = (width % 2 if codec.even else 0, height % 2 if codec.even else 0)
        self.container = av.open(os.fspath(self.temp), "w", format="matroska")
        try:
            self.stream = self.container.add_stream(codec.name, rate=rate or Fraction(25), options=codec.options)
            self.stream.width, self.stream.height = width + self.pad[0], height + self.pad[1]
            self.stream.pix_fmt = codec.pixels
            self.stream.time_base = Fraction(1, 1000)
            self.count = 0
        except BaseException:
            self.abort()
            raise

    def add(self, pixels: np.ndarray) -> None:
        """Encode the next frame (HxW grey, HxWx3 RGB or HxWx4 RGBA uint8, as the codec's ``source`` says)."""
        import av

        if any(self.pad):
            pad = ((0, self.pad[1]), (0, self.pad[0])) + ((0, 0),) * (pixels.ndim - 2)
            pixels = np.pad(pixels, pad, mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format=self.codec.source)
        frame.pts, frame.time_base = self.count, Fraction(1, 1000)  # the real times are set when joining
        self.count += 1
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        """Flush the encoder and move the finished chunk into place."""
        try:
            for packet in self.stream.encode(None):
                self.container.mux(packet)
            self.container.close()
            os.replace(self.temp, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop the chunk: close the file and remove it."""
        with contextlib.suppress(Exception):  # closing a half-written file: it is removed below anyway
            self.container.close()
        self.temp.unlink(missing_ok=True)
