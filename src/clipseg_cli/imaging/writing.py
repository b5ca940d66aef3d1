"""Write results: atomic file writes, PNG saving, and masks turned into images."""

from __future__ import annotations

import hashlib
import io
import os
import re
import secrets
import shutil
import socket
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from clipseg_cli.constants import STALE_TEMP_SECONDS, TEMP_SUFFIX

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_TEMP_NAME_BYTES = 80  # of the destination's name: the temporary name stays under 143 bytes (eCryptfs's limit)
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
# Temporary names: .<name>.<host>-<pid>-<random>.clipseg-tmp, so that a later run can tell a dead
# writer's leftovers from a live one's; .<name>.<random>.clipseg-tmp is how earlier versions named them.
_HOST = hashlib.blake2s(socket.gethostname().encode("utf-8", "replace"), digest_size=4).hexdigest()
_TEMP_NAME = re.compile(r"\.(?:.*)\.(?:(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]{1,10})-)?[0-9a-f]{8}"
                        + re.escape(TEMP_SUFFIX), re.DOTALL)


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write a file through a temporary file in the same folder, then move it into place.

    The destination is either left as it was or fully replaced; on any exception, including
    KeyboardInterrupt, the temporary file is removed and the exception re-raised. An OSError of
    the file system names `path` (never the temporary file), e.g. ``[Errno 21] Is a directory``.
    """
    path = Path(path)
    temp = None
    try:
        temp, handle = _create_temp(path)
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except OSError as exc:
        _remove(temp)
        if exc.filename is not None and exc.filename != os.fspath(temp or ""):
            raise  # about another file, e.g. the source `write` copies from
        raise OSError(exc.errno, exc.strerror or str(exc), os.fspath(path)) from exc
    except BaseException:
        _remove(temp)
        raise


def remove_stale_temps(folder: Path) -> int:
    """Remove the temporary files and folders (`temp_folder`) that writers of ours left in `folder`
    when they were killed.

    One is stale when its writer ran on this host and is no longer alive, or when it is older than
    STALE_TEMP_SECONDS (a live write takes seconds, an export a minute). Nothing else is touched.

    Returns:
        The number of files and folders removed.
    """
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:  # not there yet, or not readable: nothing of ours to clean
        return 0
    for entry in entries:
        match = _TEMP_NAME.fullmatch(entry.name) if entry.name.endswith(TEMP_SUFFIX) else None
        try:
            if not match or not _is_stale(match, entry.stat(follow_symlinks=False).st_mtime):
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            elif entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
            else:
                continue
            removed += 1
        except OSError:  # gone already (another run cleaned it), or not ours to remove
            continue
    return removed


def _is_stale(match: re.Match[str], mtime: float) -> bool:
    """Whether a temporary file's writer is gone: dead on this host, or the file is too old for a live write."""
    if time.time() - mtime > STALE_TEMP_SECONDS:
        return True
    return match["host"] == _HOST and not _is_alive(int(match["pid"]))


def _is_alive(pid: int) -> bool:
    """Whether a process of this host runs with that id (always True where we cannot tell)."""
    if os.name != "posix" or pid <= 0:  # on Windows os.kill(pid, 0) would send Ctrl-C
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def _remove(temp: Path | None) -> None:
    if temp is not None:
        temp.unlink(missing_ok=True)


def save_png(image: Image.Image, path: Path, compress_level: int = 1, text: dict[str, str] | None = None) -> None:
    """Save an image as PNG atomically (the bytes of `png_bytes`)."""
    png = png_bytes(image, compress_level, text)
    atomic_write(Path(path), lambda handle: handle.write(png))


def png_bytes(image: Image.Image, compress_level: int = 1, text: dict[str, str] | None = None) -> bytes:
    """An image as the bytes of a PNG file, with fast compression by default.

    Arguments:
        text: key/value pairs stored as (UTF-8, uncompressed) iTXt chunks before the image data.

    Returns:
        The PNG file's bytes.
    """
    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_itxt(key, value)
    stream = io.BytesIO()
    image.save(stream, format="PNG", compress_level=compress_level, pnginfo=info)
    return stream.getvalue()


def save_mask_png(mask: np.ndarray, path: Path, text: dict[str, str] | None = None) -> None:
    """Save a boolean HxW mask as an 8-bit grey PNG (0/255), atomically (see `mask_png`)."""
    png = mask_png(mask, text)
    atomic_write(Path(path), lambda handle: handle.write(png))


def mask_png(mask: np.ndarray, text: dict[str, str] | None = None) -> bytes:
    """A boolean HxW mask as the bytes of an 8-bit grey PNG (0/255).

    Masks are long runs of two values, so rows are stored unfiltered and deflated with zlib's
    run-length strategy: about 3x faster than Pillow's adaptive filtering, and half the size.

    Arguments:
        text: key/value pairs stored as (UTF-8, uncompressed) iTXt chunks before the image data.

    Returns:
        The PNG file's bytes.
    """
    _require_2d(mask, "mask")
    height, width = mask.shape
    rows = np.zeros((height, width + 1), np.uint8)  # each row starts with filter type 0 (none)
    np.multiply(mask, np.uint8(255), out=rows[:, 1:], casting="unsafe")
    deflate = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale, not interlaced
    # iTXt: keyword, 0, not compressed, method 0, no language, 0, no translated keyword, 0, text
    texts = [_chunk(b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + value.encode())
             for key, value in (text or {}).items()]
    return b"".join((PNG_SIGNATURE, _chunk(b"IHDR", header), *texts,
                     _chunk(b"IDAT", deflate.compress(rows) + deflate.flush()), _chunk(b"IEND", b"")))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def mask_to_image(mask: np.ndarray) -> Image.Image:
    """Turn a boolean HxW mask into a black-and-white image.

    Returns:
        A mode "L" image: 255 inside the mask, 0 outside.
    """
    _require_2d(mask, "mask")
    if mask.dtype != np.bool_:
        raise ValueError(f"mask must be a bool array, got {mask.dtype}")
    return Image.fromarray(mask.astype(np.uint8) * np.uint8(255))


def probability_to_image(prob: np.ndarray) -> Image.Image:
    """Turn an HxW float probability map in [0, 1] into a grey image.

    Returns:
        A mode "L" image with round(p * 255); values outside [0, 1] are clipped, NaN becomes 0.
    """
    _require_2d(prob, "probability map")
    if not np.issubdtype(prob.dtype, np.floating):
        raise ValueError(f"probability map must be a float array, got {prob.dtype}")
    values = np.nan_to_num(prob.astype(np.float32, copy=False), nan=0.0)
    return Image.fromarray(np.rint(np.clip(values, 0.0, 1.0) * 255).astype(np.uint8))


# Okabe & Ito's colour-blind-safe palette (without black): one colour per prompt, in prompt order.
PALETTE = ((230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0),
           (204, 121, 167))
OUTLINE_PX = 2


def parse_color(text: str, *, with_alpha: bool = True) -> tuple[int, ...]:
    """Read a colour: ``R,G,B`` or ``R,G,B,A`` (0..255 each), a name (``white``, ``lightgrey``) or ``#rrggbb``.

    Returns:
        (R, G, B) or (R, G, B, A). Raises ValueError naming what is wrong.
    """
    from PIL import ImageColor

    parts = [part.strip() for part in text.split(",")]
    if len(parts) == 1:
        try:
            color = ImageColor.getrgb(text.strip())
            if len(color) == 4 and not with_alpha:
                raise ValueError
            return color
        except ValueError:
            raise ValueError(f"{text!r} is not a colour: give R,G,B{'[,A]' if with_alpha else ''} (0..255), "
                             "a name such as white or #rrggbb") from None
    counts = (3, 4) if with_alpha else (3,)
    if len(parts) not in counts or not all(part.isdigit() and int(part) <= 255 for part in parts):
        raise ValueError(f"{text!r}: give {' or '.join(str(n) for n in counts)} numbers 0..255 separated by commas")
    return tuple(int(part) for part in parts)


def palette_color(index: int) -> tuple[int, int, int]:
    """Returns: the palette's colour for the prompt at ``index`` (the palette repeats after 7)."""
    return PALETTE[index % len(PALETTE)]


def contrast_color(color: tuple[int, int, int]) -> tuple[int, int, int]:
    """Returns: black or white, whichever stands out more against ``color`` (by its luma)."""
    red, green, blue = color
    return (0, 0, 0) if 0.299 * red + 0.587 * green + 0.114 * blue >= 128 else (255, 255, 255)


def overlay(
    image: Image.Image,
    mask: np.ndarray,
    color: tuple[int, int, int] = PALETTE[0],
    alpha: float = 0.5,
    outline: int = OUTLINE_PX,
) -> Image.Image:
    """Tint the masked pixels of an RGB image, pixel * (1 - alpha) + color * alpha, and draw the
    mask's outline: its outermost pixel in black or white (`contrast_color`), the next ones in
    ``color``, opaque (``outline`` pixels in all, inside the mask; none along the image's border).

    Returns:
        A new RGB image of the same size; pixels outside the mask are unchanged.
    """
    _require_same_size(image, mask)
    if mask.dtype != np.bool_:
        raise ValueError(f"mask must be a bool array, got {mask.dtype}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    # One 256-entry lookup table per channel (Pillow's point), then a masked paste: all in C.
    levels = np.arange(256, dtype=np.float64)[None, :]
    table = np.rint(levels * (1.0 - alpha) + np.asarray(color, dtype=np.float64)[:, None] * alpha)
    tinted = Image.composite(rgb.point(table.astype(np.uint8).ravel().tolist()), rgb, mask_to_image(mask))
    if outline > 0 and mask.any():
        edge, ring = _rings(mask, outline)
        tinted.paste(color, mask=mask_to_image(ring))
        tinted.paste(contrast_color(color), mask=mask_to_image(edge))
    return tinted


def combined_overlay(image: Image.Image, masks: list[np.ndarray], names: list[str], alpha: float = 0.5) -> Image.Image:
    """Every prompt's mask on one image, each tinted and outlined in its `palette_color`, with a
    small legend of the prompt texts in the top-left corner.

    Arguments:
        masks: HxW bool each, in prompt order.
        names: the prompt texts shown in the legend.

    Returns:
        A new RGB image of the same size.
    """
    from PIL import ImageDraw

    drawn = image if image.mode == "RGB" else image.convert("RGB")
    for index, mask in enumerate(masks):
        drawn = overlay(drawn, mask, palette_color(index), alpha)
    draw = ImageDraw.Draw(drawn)
    line = max(11, min(drawn.size) // 28)
    font = _font(line)
    width = max(draw.textlength(name, font=font) for name in names) + 2.2 * line if names else 0
    if names:
        draw.rectangle((4, 4, 8 + width, 8 + 1.3 * line * len(names)), fill=(255, 255, 255))
    for index, name in enumerate(names):
        top = 6 + 1.3 * line * index
        draw.rectangle((8, top + 0.15 * line, 8 + line, top + 1.15 * line), fill=palette_color(index),
                       outline=(0, 0, 0))
        draw.text((12 + 1.3 * line, top), name, fill=(0, 0, 0), font=font)
    return drawn


def _font(size: int):
    """Pillow's built-in font at ``size`` pixels (its bitmap font on Pillow < 10.1)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size)
    except TypeError:
        return ImageFont.load_default()


def _rings(mask: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns: the mask's outermost pixels (HxW bool) and the ``width - 1`` pixels inside them (HxW bool)."""
    import cv2

    kernel = np.ones((3, 3), np.uint8)
    inside = cv2.erode(mask.astype(np.uint8), kernel).astype(bool)  # the image's border counts as inside
    deeper = cv2.erode(inside.astype(np.uint8), kernel, iterations=max(1, width - 1)).astype(bool)
    return mask & ~inside, inside & ~deeper if width > 1 else np.zeros_like(mask)


def cutout(image: Image.Image, alpha: np.ndarray, background: tuple[int, ...] | None = None) -> Image.Image:
    """Give an RGB image an alpha channel from a bool mask (0/255) or a float probability (0..255).

    Colours where alpha is 0 become 0, so nothing of the background survives when the alpha is dropped.
    With ``background`` (RGB or RGBA), the cut-out is laid over that colour instead.

    Returns:
        A new RGBA image of the same size; RGB with an opaque ``background``.
    """
    _require_same_size(image, alpha)
    alpha_image = mask_to_image(alpha) if alpha.dtype == np.bool_ else probability_to_image(alpha)
    pixels = np.array(image.convert("RGB"))
    pixels[np.asarray(alpha_image) == 0] = 0
    rgba = Image.fromarray(pixels)
    rgba.putalpha(alpha_image)
    if background is None:
        return rgba
    under = Image.new("RGBA", rgba.size, (*background[:3], background[3] if len(background) > 3 else 255))
    laid = Image.alpha_composite(under, rgba)
    return laid.convert("RGB") if under.getpixel((0, 0))[3] == 255 else laid


def _create_temp(path: Path) -> tuple[Path, BinaryIO]:
    """Create a new hidden temporary file next to `path`, with the default permissions.

    Its name holds at most 80 bytes of `path`'s name, this host and this process (see remove_stale_temps).

    Returns:
        The temporary path and its open binary handle.
    """
    while True:
        temp = _temp_path(path)
        try:
            fd = os.open(temp, _OPEN_FLAGS, 0o666)
        except FileExistsError:
            continue
        return temp, os.fdopen(fd, "wb")


def temp_folder(path: Path) -> Path:
    """Create a new hidden folder next to `path` for the files that will become it, named as
    `_create_temp` names files (so `remove_stale_temps` removes it once its writer is gone).

    Returns:
        The folder; the caller removes it.
    """
    while True:
        folder = _temp_path(path)
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder


def _temp_path(path: Path) -> Path:
    """A new temporary name next to `path`: at most 80 bytes of its name, this host, this process."""
    prefix = path.name.encode("utf-8", "surrogatepass")[:_TEMP_NAME_BYTES].decode("utf-8", "ignore")
    return path.with_name(f".{prefix}.{_HOST}-{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}")


def _require_2d(array: np.ndarray, what: str) -> None:
    """Refuse anything but an HxW array."""
    if array.ndim != 2:
        raise ValueError(f"{what} must be HxW, got shape {array.shape}")


def _require_same_size(image: Image.Image, array: np.ndarray) -> None:
    """Refuse an HxW array whose size differs from the image's."""
    _require_2d(array, "mask")
    if array.shape != (image.height, image.width):
        height, width = array.shape
        raise ValueError(f"mask is {width}x{height} but the image is {image.width}x{image.height}")
