"""Fast offline tests of image decoding and writing; every test image is made in tmp_path."""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from clipseg_cli.constants import OUTPUT_SUFFIXES
from clipseg_cli.errors import ImageError
from clipseg_cli.imaging import decode
from clipseg_cli.imaging.decode import DecodedImage, open_image, to_rgb
from clipseg_cli.imaging.writing import (
    PALETTE,
    TEMP_SUFFIX,
    atomic_write,
    combined_overlay,
    contrast_color,
    cutout,
    mask_to_image,
    overlay,
    parse_color,
    probability_to_image,
    save_mask_png,
    save_png,
)
from helpers import binary_mask, clipseg, noise, pixels, save

RED = (255, 0, 0)


def _pixel(decoded: DecodedImage, xy: tuple[int, int] = (0, 0)) -> tuple[int, ...]:
    return decoded.image.getpixel(xy)


def _jpeg_bytes(image: Image.Image, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **kwargs)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _assert_error(source: object, reason: str, **kwargs: object) -> ImageError:
    with pytest.raises(ImageError) as info:
        open_image(source, **kwargs)
    assert reason in info.value.reason
    assert "\n" not in str(info.value)
    return info.value


# ---- decoding: orientation and modes ----


def test_exif_orientation_6_gives_upright_size(tmp_path: Path) -> None:
    # Raw 40x20: left half red, right half blue; orientation 6 means rotate 90 degrees clockwise.
    raw = Image.new("RGB", (40, 20), (0, 0, 255))
    raw.paste(RED, (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    path.write_bytes(_jpeg_bytes(raw, exif=exif, quality=95))
    decoded = open_image(path)
    assert decoded.size == (20, 40)
    assert decoded.image.size == (20, 40)
    assert decoded.image.mode == "RGB"
    assert decoded.path == str(path)
    top = _pixel(decoded, (10, 5))
    assert top[0] > 200 and top[2] < 60  # the red left half is now on top


def test_palette_with_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (8, 8), 1)
    image.putpalette([*RED, 0, 255, 0] + [0] * 762)
    image.paste(0, (0, 0, 4, 8))
    path = tmp_path / "palette.png"
    image.save(path, transparency=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        decoded = open_image(path)
    assert decoded.image.mode == "RGB"
    assert _pixel(decoded, (0, 0)) == RED
    assert _pixel(decoded, (7, 0)) == (0, 255, 0)  # transparent pixel keeps its colour, like convert("RGB")


@pytest.mark.parametrize(
    ("mode", "color", "expected"),
    [
        ("LA", (100, 0), (100, 100, 100)),
        ("RGBA", (10, 20, 30, 0), (10, 20, 30)),
        ("L", 77, (77, 77, 77)),
        ("1", 1, (255, 255, 255)),
    ],
)
def test_modes_convert_to_rgb(tmp_path: Path, mode: str, color: object, expected: tuple[int, ...]) -> None:
    path = tmp_path / f"mode_{mode}.png"
    Image.new(mode, (6, 4), color).save(path)
    decoded = open_image(path)
    assert decoded.image.mode == "RGB"
    assert decoded.size == (6, 4)
    assert _pixel(decoded) == expected


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=100)
    decoded = open_image(path)
    assert decoded.image.mode == "RGB"
    red, green, blue = _pixel(decoded, (8, 8))
    assert red > 230 and green < 25 and blue < 25


def test_sixteen_bit_grey_scales_to_eight_bit(tmp_path: Path) -> None:
    values = np.array([[0, 255, 256, 32768, 65535]], dtype=np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)
    decoded = open_image(path)
    assert decoded.image.mode == "RGB"
    assert [_pixel(decoded, (x, 0))[0] for x in range(5)] == [0, 0, 1, 128, 255]


def test_to_rgb_sixteen_bit_variants() -> None:
    big_endian = Image.frombytes("I;16B", (2, 1), np.array([65535, 32768], dtype=">u2").tobytes())
    int32 = Image.fromarray(np.array([[65535, 32768]], dtype=np.uint16)).convert("I")
    for image in (big_endian, int32):
        assert list(np.asarray(to_rgb(image))[0, :, 0]) == [255, 128]


def test_to_rgb_float_mode() -> None:
    image = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert list(np.asarray(to_rgb(image))[0, :, 1]) == [0, 128, 255]


def test_animated_gif_gives_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (10, 10), color) for color in (RED, (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert _pixel(open_image(path)) == RED


def test_animated_png_gives_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGBA", (10, 10), color) for color in ((0, 255, 0, 255), (0, 0, 255, 255))]
    path = tmp_path / "anim.png"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    assert _pixel(open_image(path)) == (0, 255, 0)


@pytest.mark.parametrize("name", ["fötö 写真.png", "with space.png"])
def test_unicode_and_space_names(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    Image.new("RGB", (3, 2), RED).save(path)
    for source in (path, str(path)):
        decoded = open_image(source)
        assert decoded.size == (3, 2)
        assert decoded.path == str(path)


# ---- decoding: bad input ----


def test_missing_file(tmp_path: Path) -> None:
    _assert_error(tmp_path / "nope.png", "no such file")


def test_directory(tmp_path: Path) -> None:
    _assert_error(tmp_path, "directory")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.touch()
    error = _assert_error(path, "empty file")
    assert str(error) == f"{path}: empty file"


def test_text_file_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image\n")
    _assert_error(path, "not an image file (cannot identify format)")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_permission_denied(tmp_path: Path) -> None:
    path = tmp_path / "locked.png"
    Image.new("RGB", (2, 2)).save(path)
    path.chmod(0)
    try:
        _assert_error(path, "permission denied")
    finally:
        path.chmod(0o644)


def test_permission_denied_at_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "locked.png"
    Image.new("RGB", (2, 2)).save(path)

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(decode.Image, "open", refuse)
    _assert_error(path, "permission denied")


@pytest.mark.parametrize(("fmt", "suffix"), [("JPEG", "jpg"), ("PNG", "png")])
def test_truncated_file(tmp_path: Path, fmt: str, suffix: str) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format=fmt)
    path = tmp_path / f"truncated.{suffix}"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    _assert_error(path, "truncated or corrupt image data")


def test_over_limit_refused_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (30, 20)).save(path)
    for owner in (Image.Image, ImageFile.ImageFile):
        monkeypatch.setattr(owner, "load", lambda self: pytest.fail("pixels were decoded"))
    error = _assert_error(path, "over the limit", max_pixels=599)
    assert error.reason == "image is 30x20 = 600 pixels, over the limit of 599 (raise it with --max-pixels)"


def test_decompression_bomb_header_refused_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)  # 30000x30000 RGB, 8 bit
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
    data += _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b"")
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    for owner in (Image.Image, ImageFile.ImageFile):  # fast because refused from the header: no pixel is decoded
        monkeypatch.setattr(owner, "load", lambda self: pytest.fail("pixels were decoded"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _assert_error(path, "image is 30000x30000 = 900000000 pixels, over the limit of 178956970")


def test_our_limit_replaces_pillows(tmp_path: Path) -> None:
    # 100 pixels over Pillow's default limit would raise its DecompressionBombError; ours allows it.
    assert Image.MAX_IMAGE_PIXELS is None
    path = tmp_path / "small.png"
    Image.new("RGB", (5, 5)).save(path)
    assert open_image(path, max_pixels=10**12).size == (5, 5)


def test_pillow_bomb_error_is_converted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "small.png"
    Image.new("RGB", (50, 50)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    _assert_error(path, "decompression-bomb")


# ---- decoding: reduced-scale JPEG ----


def test_draft_decoding_keeps_full_size(tmp_path: Path) -> None:
    path = tmp_path / "large.jpg"
    Image.new("RGB", (4000, 3000), (20, 120, 220)).save(path, quality=80)
    decoded = open_image(path, min_side=352)
    assert decoded.size == (4000, 3000)
    assert decoded.image.size == (500, 375)  # 1/8 DCT scale
    assert min(decoded.image.size) >= 352
    assert open_image(path).image.size == (4000, 3000)


def test_draft_decoding_with_exif_rotation(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated_large.jpg"
    path.write_bytes(_jpeg_bytes(Image.new("RGB", (1600, 1000), RED), exif=exif))
    decoded = open_image(path, min_side=250)
    assert decoded.size == (1000, 1600)
    assert decoded.image.size == (250, 400)  # 1/4 scale: 1/8 would give a 125-pixel side


def test_min_side_ignored_for_png(tmp_path: Path) -> None:
    path = tmp_path / "large.png"
    Image.new("RGB", (800, 600)).save(path)
    assert open_image(path, min_side=100).image.size == (800, 600)


# ---- decoding: in-memory inputs ----


def test_pil_input_is_transposed_and_not_mutated() -> None:
    image = Image.new("RGBA", (4, 2), (1, 2, 3, 4))
    image.getexif()[0x0112] = 6
    decoded = open_image(image)
    assert decoded.path is None
    assert decoded.size == (2, 4)
    assert decoded.image.mode == "RGB"
    assert image.mode == "RGBA" and image.size == (4, 2)
    rgb = Image.new("RGB", (2, 2))
    assert open_image(rgb).image is not rgb


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.full((2, 3), 9, dtype=np.uint8), (9, 9, 9)),
        (np.full((2, 3, 3), (1, 2, 3), dtype=np.uint8), (1, 2, 3)),
        (np.full((2, 3, 4), (1, 2, 3, 0), dtype=np.uint8), (1, 2, 3)),
        (np.full((2, 3, 3), (0.0, 0.5, 1.0), dtype=np.float32), (0, 128, 255)),
        (np.full((2, 3), 1.0, dtype=np.float64), (255, 255, 255)),
    ],
)
def test_numpy_inputs(array: np.ndarray, expected: tuple[int, int, int]) -> None:
    decoded = open_image(array)
    assert decoded.size == (3, 2)
    assert decoded.path is None
    assert decoded.image.mode == "RGB"
    assert _pixel(decoded, (2, 1)) == expected


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((2, 3, 2), dtype=np.uint8),
        np.zeros((2, 3, 3, 1), dtype=np.uint8),
        np.zeros((2, 3), dtype=np.uint16),
        np.zeros((2, 3), dtype=bool),
        np.full((2, 3), 2.0),
        np.full((2, 3), np.nan),
        np.zeros((0, 3), dtype=np.uint8),
    ],
)
def test_bad_numpy_inputs(array: np.ndarray) -> None:
    error = _assert_error(array, "")
    assert error.path == "<array>"


def test_numpy_over_limit() -> None:
    _assert_error(np.zeros((10, 10), dtype=np.uint8), "over the limit", max_pixels=99)


# ---- writing ----


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.endswith(TEMP_SUFFIX)]


def test_atomic_write_replaces(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    seen: list[str] = []

    def write(handle: io.BufferedWriter) -> None:
        seen.extend(p.name for p in tmp_path.iterdir() if p.name != "out.bin")
        handle.write(b"new")

    atomic_write(path, write)
    assert path.read_bytes() == b"new"
    assert len(seen) == 1 and seen[0].startswith(".out.bin.") and seen[0].endswith(TEMP_SUFFIX)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_atomic_write_failure_keeps_old_file(tmp_path: Path, error: BaseException) -> None:
    path = tmp_path / "out.png"
    path.write_bytes(b"old")

    def write(handle: io.BufferedWriter) -> None:
        handle.write(b"half")
        raise error

    with pytest.raises(type(error)):
        atomic_write(path, write)
    assert path.read_bytes() == b"old"
    assert _temp_files(tmp_path) == []


def test_atomic_write_failure_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "new.png", lambda handle: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert list(tmp_path.iterdir()) == []


def test_save_png_round_trip(tmp_path: Path) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    path = tmp_path / "round trip ü.png"
    save_png(Image.fromarray(pixels), path)
    with Image.open(path) as saved:
        assert saved.format == "PNG"
        assert np.array_equal(np.asarray(saved), pixels)
    assert _temp_files(tmp_path) == []


@pytest.mark.parametrize("shape", [(1, 1), (37, 53), (300, 1)])
def test_save_mask_png_is_a_standard_grey_png(tmp_path: Path, shape: tuple[int, int]) -> None:
    mask = np.random.default_rng(0).random(shape) > 0.5
    path = tmp_path / "ü mask.png"
    save_mask_png(mask, path)
    with Image.open(path) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "L", (shape[1], shape[0]))
        assert np.array_equal(np.asarray(image), mask.astype(np.uint8) * 255)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_mask_to_image() -> None:
    image = mask_to_image(np.array([[True, False]]))
    assert image.mode == "L"
    assert list(np.asarray(image)[0]) == [255, 0]
    with pytest.raises(ValueError):
        mask_to_image(np.ones((2, 2), dtype=np.float32))


def test_probability_to_image() -> None:
    image = probability_to_image(np.array([[0.0, 0.5, 1.0, 0.2]], dtype=np.float32))
    assert image.mode == "L"
    assert list(np.asarray(image)[0]) == [0, 128, 255, 51]


def test_overlay_tints_only_masked_pixels_and_outlines_them() -> None:
    image = Image.new("RGB", (7, 7), (100, 100, 100))
    mask = np.zeros((7, 7), dtype=bool)
    mask[1:6, 1:6] = True
    result = np.asarray(overlay(image, mask, color=(0, 0, 200), alpha=0.5))
    assert (result[~mask] == 100).all() and image.getpixel((0, 0)) == (100, 100, 100)
    assert tuple(result[1, 1]) == tuple(result[5, 3]) == (255, 255, 255)  # outermost pixel: contrasting
    assert tuple(result[2, 2]) == tuple(result[2, 4]) == (0, 0, 200)  # next one: the colour, opaque
    assert tuple(result[3, 3]) == (50, 50, 150)  # inside: tinted
    yellow = np.asarray(overlay(image, mask, color=PALETTE[3], outline=0))
    assert tuple(yellow[1, 1]) == tuple(yellow[3, 3])
    assert contrast_color(PALETTE[3]) == (0, 0, 0)
    assert overlay(image, mask, color=(0, 0, 0), alpha=1.0, outline=0).getpixel((3, 3)) == (0, 0, 0)
    with pytest.raises(ValueError):
        overlay(image, np.ones((2, 1), dtype=bool))


def test_cutout_alpha() -> None:
    image = Image.new("RGB", (2, 1), (5, 6, 7))
    from_mask = cutout(image, np.array([[True, False]]))
    assert from_mask.mode == "RGBA"
    assert from_mask.getpixel((0, 0)) == (5, 6, 7, 255)
    assert from_mask.getpixel((1, 0)) == (0, 0, 0, 0)  # nothing of the background under alpha 0
    from_prob = cutout(image, np.array([[0.25, 0.0]], dtype=np.float32))
    assert [from_prob.getpixel((x, 0)) for x in range(2)] == [(5, 6, 7, 64), (0, 0, 0, 0)]
    on_white = cutout(image, np.array([[0.25, 0.0]], dtype=np.float32), (255, 255, 255))
    assert on_white.mode == "RGB" and on_white.getpixel((1, 0)) == (255, 255, 255)
    assert on_white.getpixel((0, 0)) == tuple(round(c * 64 / 255 + 255 * (1 - 64 / 255)) for c in (5, 6, 7))
    assert cutout(image, np.array([[False, False]]), (0, 0, 255, 128)).getpixel((0, 0)) == (0, 0, 255, 128)


@pytest.mark.parametrize(("text", "color"), [("white", (255, 255, 255)), ("0, 177,64", (0, 177, 64)),
                                             ("1,2,3,4", (1, 2, 3, 4)), ("#ff0000", (255, 0, 0))])
def test_parse_color(text: str, color: tuple[int, ...]) -> None:
    assert parse_color(text) == color


# ---- cut-outs and overlays through the command line ---------------------------------------------------------------


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    return save(noise((96, 64), seed=3), tmp_path / "photo.png")


def _segment(photo: Path, checkpoint: Path, *args: object) -> list[dict]:
    done = clipseg("segment", photo, *args, "--weights", checkpoint, "--precision", "fp32", "--json", "-q")
    assert done.code == 0, done.stderr
    return done.records()


def test_cutout_keeps_nothing_of_the_background_and_is_smaller(photo: Path, checkpoint: Path) -> None:
    [record] = _segment(photo, checkpoint, "car", "--cutout", "-t", "0.5")
    cut = pixels(record["cutout"], "RGBA", (96, 64))
    alpha = cut[..., 3]
    assert 0.2 < (alpha == 0).mean() < 0.8  # the fixture's mask leaves some of both
    assert (cut[alpha == 0, :3] == 0).all()  # dropping the alpha shows black, not the background
    original = np.asarray(Image.open(photo))
    assert (cut[alpha > 0, :3] == original[alpha > 0]).all()
    leaky = Image.fromarray(np.dstack([original, alpha]))  # what earlier versions wrote
    save_png(leaky, photo.parent / "leaky.png")
    assert Path(record["cutout"]).stat().st_size < 0.8 * (photo.parent / "leaky.png").stat().st_size


def test_bg_color_lays_the_cutout_on_a_colour(photo: Path, checkpoint: Path) -> None:
    [record] = _segment(photo, checkpoint, "car", "--cutout", "-t", "0.5", "--bg-color", "white")
    on_white = pixels(record["cutout"], "RGB", (96, 64))
    mask = binary_mask(record["mask"], (96, 64))
    assert (on_white[~mask] == 255).all() and (on_white[mask] == np.asarray(Image.open(photo))[mask]).all()
    [record] = _segment(photo, checkpoint, "car", "--cutout", "-t", "0.5", "--bg-color", "0,0,255,128")
    assert (pixels(record["cutout"], "RGBA", (96, 64))[~mask] == (0, 0, 255, 128)).all()


@pytest.mark.parametrize(("option", "value"), [("--bg-color", "blurple"), ("--bg-color", "1,2"),
                                               ("--bg-color", "0,0,300"), ("--bg-color", "1,2,3,4,5"),
                                               ("--overlay-color", "1,2,3,4"), ("--overlay-color", "#ff000080")])
def test_a_bad_colour_is_a_one_line_usage_error(photo: Path, checkpoint: Path, option: str, value: str) -> None:
    done = clipseg("segment", photo, "car", "--cutout", option, value, "--weights", checkpoint)
    assert done.code == 2 and option in done.stderr and "Traceback" not in done.stderr
    assert not list(photo.parent.glob("*.cutout.png"))


def test_overlays_have_one_palette_colour_per_prompt_and_take_a_colour(photo: Path, checkpoint: Path) -> None:
    records = _segment(photo, checkpoint, "car", "tree", "-t", "0.5")
    for index, record in enumerate(records):
        mask = binary_mask(record["mask"], (96, 64))
        assert mask.any()
        drawn = pixels(record["overlay"], "RGB", (96, 64))
        assert {tuple(p) for p in drawn[mask]} >= {PALETTE[index], contrast_color(PALETTE[index])}
    [record] = _segment(photo, checkpoint, "car", "-t", "0.5", "--overlay-color", "0,255,0", "--overlay-alpha", "1",
                        "--force")
    mask = binary_mask(record["mask"], (96, 64))
    drawn = pixels(record["overlay"], "RGB", (96, 64))
    assert {tuple(p) for p in drawn[mask]} == {(0, 255, 0), (0, 0, 0)}
    assert (drawn[~mask] == np.asarray(Image.open(photo))[~mask]).all()


def test_a_new_bg_color_or_overlay_colour_redoes_the_files_and_names_why(photo: Path, checkpoint: Path) -> None:
    _segment(photo, checkpoint, "car", "--cutout")
    assert _segment(photo, checkpoint, "car", "--cutout")[0]["status"] == "skipped"
    [record] = _segment(photo, checkpoint, "car", "--cutout", "--bg-color", "white")
    assert (record["status"], record["reason"]) == ("ok", "settings changed (bg_color)")
    [record] = _segment(photo, checkpoint, "car", "--cutout", "--bg-color", "white", "--overlay-alpha", "0.3")
    assert (record["status"], record["reason"]) == ("ok", "settings changed (overlay_alpha)")


def test_combined_overlay_draws_every_prompt_in_its_colour_with_a_legend() -> None:
    image = Image.new("RGB", (200, 120), (128, 128, 128))
    left, right = np.zeros((120, 200), bool), np.zeros((120, 200), bool)
    left[60:110, 10:90], right[60:110, 110:190] = True, True
    drawn = np.asarray(combined_overlay(image, [left, right], ["cat", "coffee cup"], alpha=1.0))
    assert tuple(drawn[85, 50]) == PALETTE[0] and tuple(drawn[85, 150]) == PALETTE[1]
    legend = drawn[:40, :100]
    assert (legend == 255).all(axis=2).any() and (legend == 0).all(axis=2).any()  # a white box with black text
    assert {PALETTE[0], PALETTE[1]} <= {tuple(p) for p in legend.reshape(-1, 3)}


def test_every_file_the_readme_names_under_examples_exists() -> None:
    root = Path(__file__).resolve().parents[2]
    named = {path for path in re.findall(r"examples/[\w.-]+\.\w+", (root / "README.md").read_text(encoding="utf-8"))
             if not path.endswith(OUTPUT_SUFFIXES)}  # what clipseg writes there is not shipped
    assert named and all((root / path).is_file() for path in named), named
    assert (root / "LICENSE").read_text().startswith("MIT License")
