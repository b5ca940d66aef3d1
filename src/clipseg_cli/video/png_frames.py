"""``--png-frames``: an output video also as a PNG sequence, for tools that want files.

``{stem}.{label}.{kind}.frames/000000.png``, one PNG per frame, upright (as players show the video),
at the video's size, each carrying the video's fingerprint record (as ``clipseg batch``'s PNGs do), so a
rerun judges the folder by its own files. The frames are decoded from the finished video: the mask's
are exactly the masks; an overlay's and a cut-out's are what their codec kept. The folder is written
under a temporary name and renamed complete.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from clipseg_cli.fingerprint import PNG_KEY
from clipseg_cli.imaging.writing import save_png, temp_folder
from clipseg_cli.video.encoding import Codec
from clipseg_cli.video.reading import VideoInfo, upright

FIRST = "000000.png"


def frames_folder(video: Path) -> Path:
    """Returns: the PNG sequence's folder of an output video: ``clip.dog.mask.mkv`` -> ``clip.dog.mask.frames``."""
    return video.with_name(video.name.rsplit(".", 1)[0] + ".frames")


def write_png_frames(video: Path, info: VideoInfo, codec: Codec, record: str) -> Path:
    """Decode a finished output video into its PNG sequence (replacing an older one whole).

    Returns:
        The folder.
    """
    folder = frames_folder(video)
    temp = temp_folder(folder)
    try:
        for index, pixels in enumerate(_decoded(video, codec)):
            stored = pixels[: info.height, : info.width]  # an overlay's padding to even sizes dropped
            save_png(Image.fromarray(upright(np.ascontiguousarray(stored), info.rotation)), temp / f"{index:06d}.png",
                     text={PNG_KEY: record})
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(temp, folder)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return folder


def _decoded(video: Path, codec: Codec) -> Iterator[np.ndarray]:
    """The frames of an output video, in the layout it was encoded from (grey, RGB or RGBA)."""
    import av

    with av.open(os.fspath(video)) as container:
        stream = container.streams.video[0]
        if codec.name == "libvpx-vp9":  # FFmpeg's own VP9 decoder drops the alpha; libvpx's keeps it
            context = av.CodecContext.create("libvpx-vp9", "r")
            frames = (frame for packet in container.demux(stream) for frame in context.decode(packet))
        else:
            frames = container.decode(stream)
        for frame in frames:
            yield frame.to_ndarray(format=codec.source)
