"""Decode an image file, its bytes, a PIL image or a numpy array into an upright RGB image."""

from __future__ import annotations

import io
import os
import stat
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from clipseg_cli.constants import DEFAULT_MAX_PIXELS
from clipseg_cli.errors import ImageError

# Our own max_pixels check replaces Pillow's global decompression-bomb limit. It is set once here,
# never per call, because several threads decode at the same time.
Image.MAX_IMAGE_PIXELS = None

ARRAY_LABEL = "<array>"
IMAGE_LABEL = "<image>"
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_ROTATING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_CORRUPT_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)


@dataclass(frozen=True)
class DecodedImage:
    """An upright RGB image and the size of the full image it came from."""

    image: Image.Image  # RGB, upright; may be smaller than `size` when decoded at reduced scale
    size: tuple[int, int]  # (width, height) of the full upright image
    path: str | None


def open_image(
    source: str | os.PathLike[str] | bytes | Image.Image | np.ndarray,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int | None = None,
    label: str = IMAGE_LABEL,
) -> DecodedImage:
    """Decode a file path, a file's bytes, a PIL image or a numpy array into an upright RGB image.

    Files over `max_pixels` are refused from their header, before any pixel is decoded. With
    `min_side`, a JPEG is decoded at a reduced DCT scale whose shorter side stays >= `min_side`.
    Bytes are decoded exactly as the file holding them would be; ``label`` names them in errors.
    Arrays may be HxW, HxWx3 or HxWx4, uint8 or float in [0, 1].

    Returns:
        The decoded image; every problem with the input raises `ImageError`.
    """
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be at least 1, got {max_pixels}")
    if min_side is not None and min_side < 1:
        raise ValueError(f"min_side must be at least 1, got {min_side}")
    if isinstance(source, Image.Image):
        return _from_pil(source, max_pixels)
    if isinstance(source, np.ndarray):
        return _from_array(source, max_pixels)
    if isinstance(source, bytes):
        if not source:
            raise ImageError(label, "empty file")
        return _from_encoded(io.BytesIO(source), label, max_pixels, min_side)
    path = os.fspath(source)
    _check_file(path)
    return _from_encoded(path, path, max_pixels, min_side)


def header_pixels(source: str | os.PathLike[str] | bytes) -> int:
    """Width x height of an image file (or a file's bytes) from its header, without decoding a pixel.

    Returns:
        The pixel count; 0 when the file cannot be read as an image (decoding it will say why).
    """
    try:
        if not isinstance(source, bytes):
            _check_file(os.fspath(source))  # never opens a FIFO, which would wait for a writer
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            width, height = img.size
    except Exception:  # any failure is reported by the decode itself
        return 0
    return width * height


def to_rgb(image: Image.Image, label: str = IMAGE_LABEL) -> Image.Image:
    """Convert an image of any Pillow mode to 8-bit RGB, dropping alpha like `convert("RGB")`.

    16-bit grey keeps its top 8 bits (value >> 8) instead of Pillow's clipping conversion.

    Returns:
        An RGB image; `image` itself when it is RGB already.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        grey = np.clip(np.asarray(image).astype(np.int64), 0, 65535) >> 8
        return Image.fromarray(grey.astype(np.uint8)).convert("RGB")
    if mode == "F":
        return Image.fromarray(_float_to_uint8(np.asarray(image))).convert("RGB")
    if mode in ("P", "PA"):
        # Palette transparency goes through RGBA so Pillow does not warn; RGB values are unchanged.
        return image.convert("RGBA").convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as exc:
        raise ImageError(label, f"unsupported image mode {mode} ({_describe(exc)})") from exc


def _from_encoded(source: str | io.BytesIO, label: str, max_pixels: int, min_side: int | None) -> DecodedImage:
    """Open, check, optionally draft, fully decode and orient an image file (a path, or its bytes in memory).

    Returns:
        The decoded image with the full upright size (its path: the file's, None for bytes).
    """
    with _pillow_errors(label), Image.open(source) as img:
        _check_pixels(img.size, max_pixels, label)
        orientation = _orientation(img)
        width, height = img.size
        size = (height, width) if orientation in _ROTATING_ORIENTATIONS else (width, height)
        if min_side is not None and img.format in ("JPEG", "MPO"):
            # A square request keeps both decoded sides >= min_side, whatever the EXIF rotation.
            img.draft("RGB", (min_side, min_side))
        img.load()
        upright = _apply_orientation(img, orientation)
    return DecodedImage(to_rgb(upright, label), size, source if isinstance(source, str) else None)


def _from_pil(image: Image.Image, max_pixels: int) -> DecodedImage:
    """Orient and convert a caller's PIL image without changing it.

    Returns:
        The decoded image, a new object independent of `image`.
    """
    label = str(getattr(image, "filename", "") or IMAGE_LABEL)
    _check_pixels(image.size, max_pixels, label)
    with _pillow_errors(label):
        image.load()
        upright = _apply_orientation(image, _orientation(image))
    rgb = to_rgb(upright, label)
    if rgb is image:
        rgb = image.copy()
    return DecodedImage(rgb, rgb.size, None)


def _from_array(array: np.ndarray, max_pixels: int) -> DecodedImage:
    """Turn an HxW, HxWx3 or HxWx4 uint8 (or float in [0, 1]) array into an RGB image.

    Returns:
        The decoded image; alpha is dropped.
    """
    shape = array.shape
    if not (array.ndim == 2 or (array.ndim == 3 and shape[2] in (3, 4))):
        raise ImageError(ARRAY_LABEL, f"expected an HxW, HxWx3 or HxWx4 array, got shape {shape}")
    height, width = shape[:2]
    if height == 0 or width == 0:
        raise ImageError(ARRAY_LABEL, f"array is empty (shape {shape})")
    _check_pixels((width, height), max_pixels, ARRAY_LABEL)
    if array.dtype == np.uint8:
        data = array
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ImageError(ARRAY_LABEL, "float array values must be finite and in [0, 1]")
        data = np.rint(array.astype(np.float32) * 255).astype(np.uint8)
    else:
        raise ImageError(ARRAY_LABEL, f"expected a uint8 array or a float array in [0, 1], got {array.dtype}")
    if data.ndim == 3:
        data = data[..., :3]
    image = to_rgb(Image.fromarray(np.ascontiguousarray(data)), ARRAY_LABEL)
    return DecodedImage(image, (width, height), None)


def _check_file(path: str) -> None:
    """Refuse missing, unreadable, non-regular and empty files with a clear reason."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ImageError(path, "no such file") from None
    except PermissionError:
        raise ImageError(path, "permission denied") from None
    except OSError as exc:
        raise ImageError(path, f"cannot read file ({exc.strerror or exc})") from exc
    if stat.S_ISDIR(info.st_mode):
        raise ImageError(path, "is a directory, not an image file")
    if not stat.S_ISREG(info.st_mode):
        raise ImageError(path, "not a regular file")
    if info.st_size == 0:
        raise ImageError(path, "empty file")


def _check_pixels(size: tuple[int, int], max_pixels: int, label: str) -> None:
    """Refuse an image whose width * height is over `max_pixels`."""
    width, height = size
    pixels = width * height
    if pixels > max_pixels:
        raise ImageError(
            label,
            f"image is {width}x{height} = {pixels} pixels, over the limit of {max_pixels} "
            "(raise it with --max-pixels)",
        )


def _orientation(image: Image.Image) -> int:
    """Read the EXIF (or XMP) orientation tag.

    Returns:
        The orientation 1..8; 1 when absent or invalid.
    """
    value = image.getexif().get(ExifTags.Base.Orientation, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _apply_orientation(image: Image.Image, orientation: int) -> Image.Image:
    """Rotate/flip a loaded image upright.

    Returns:
        A new upright image, or `image` itself when it is upright already.
    """
    if orientation == 1:
        return image
    return ImageOps.exif_transpose(image)


def _float_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map float grey to 8 bit: [0, 1] data is scaled by 255, anything else is clipped to [0, 255].

    Returns:
        A uint8 array of the same shape; NaN becomes 0.
    """
    values = np.nan_to_num(values.astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0)
    if values.size and values.min() >= 0 and values.max() <= 1:
        values = values * 255
    return np.rint(np.clip(values, 0, 255)).astype(np.uint8)


def _describe(exc: BaseException) -> str:
    """One-line description of a Pillow exception.

    Returns:
        The message on one line, or the exception's type name when it has none.
    """
    return " ".join(str(exc).split()) or type(exc).__name__


@contextmanager
def _pillow_errors(label: str) -> Iterator[None]:
    """Turn every error Pillow raises while opening or decoding into a one-line `ImageError`."""
    try:
        yield
    except Image.DecompressionBombError as exc:
        raise ImageError(label, f"over Pillow's decompression-bomb limit ({_describe(exc)})") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(label, "not an image file (cannot identify format)") from exc
    except FileNotFoundError as exc:
        raise ImageError(label, "no such file") from exc
    except IsADirectoryError as exc:
        raise ImageError(label, "is a directory, not an image file") from exc
    except PermissionError as exc:
        raise ImageError(label, "permission denied") from exc
    except _CORRUPT_ERRORS as exc:
        raise ImageError(label, f"truncated or corrupt image data: {_describe(exc)}") from exc
