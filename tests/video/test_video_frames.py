"""`clipseg video` through the real entry point: exact frames against `clipseg segment`, and what is kept of the
source (timestamps, frame rate, rotation, sound, odd sizes) in every output kind."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from video_clips import decoded_frames, make_clip, packet_times, stream_facts

from helpers import clipseg

pytestmark = pytest.mark.usefixtures("offline")

PROMPTS = ["-p", "square", "-p", "disc"]


def upright_frames(clip: Path) -> list[np.ndarray]:
    """The source's frames as `to_ndarray("rgb24")` gives them, turned as players show them."""
    rotation = stream_facts(clip)["rotation"]
    return [np.rot90(frame, rotation // 90) for frame in decoded_frames(clip)]


@pytest.mark.parametrize(("size", "rotation", "soft"), [((64, 48), 0, False), ((65, 47), 90, False),
                                                        ((64, 48), 0, True)])
def test_each_mask_frame_is_what_segment_writes_for_that_frame(tmp_path: Path, weights: list[str],
                                                               size: tuple[int, int], rotation: int, soft: bool):
    clip = make_clip(tmp_path / "clip.mp4", size=size, rotation=rotation, frames=6)
    flags = ["--soft"] if soft else []
    run = clipseg("video", clip, *PROMPTS, "-o", tmp_path / "out", "--no-overlay", *flags, *weights)
    assert run.code == 0, run.stderr
    frames = upright_frames(clip)
    for label in ("square", "disc"):
        masks = decoded_frames(tmp_path / "out" / f"clip.{label}.mask.mkv", "gray")
        assert len(masks) == len(frames) == 6
        for index in (0, 3, 5):
            png = tmp_path / "frames" / f"f{index}.png"
            png.parent.mkdir(exist_ok=True)
            Image.fromarray(frames[index]).save(png)
            segmented = clipseg("segment", png, label, "-o", tmp_path / "frames", "--no-overlay", *flags, *weights)
            assert segmented.code == 0, segmented.stderr
            expected = np.asarray(Image.open(tmp_path / "frames" / f"f{index}.{label}.mask.png"))
            stored = np.rot90(expected, -(rotation // 90))
            assert masks[index].shape == stored.shape == (size[1], size[0])
            np.testing.assert_array_equal(masks[index], stored)
    levels = np.unique(np.concatenate([m.ravel() for m in masks]))
    assert (len(levels) > 2) == soft  # soft maps are grey levels, masks 0 and 255


def test_timestamps_rate_rotation_and_sound_are_kept_in_every_output(tmp_path: Path, weights: list[str]):
    step = 3754  # 1/90000 s: 24000/1001 fps, then a stretch of variable frame rate
    times = [i * step for i in range(6)] + [6 * step + 9000 * i for i in range(1, 5)]
    clip = make_clip(tmp_path / "vfr.mp4", size=(65, 47), rotation=270, times=times)
    run = clipseg("video", clip, "-p", "square", "-o", tmp_path / "out", "--cutout", *weights)
    assert run.code == 0, run.stderr
    source = stream_facts(clip)
    outputs = {kind: tmp_path / "out" / f"vfr.square.{kind}" for kind in ("mask.mkv", "overlay.mp4", "cutout.mov")}
    for kind, path in outputs.items():
        facts = stream_facts(path)
        assert facts["rotation"] % 360 == source["rotation"] % 360 == 270
        tolerance = 0.0006 if kind.endswith("mkv") else 1e-6  # Matroska stores milliseconds
        np.testing.assert_allclose(packet_times(path), packet_times(clip), atol=tolerance)
        if kind == "mask.mkv":
            assert "audio" not in facts and facts["size"] == (65, 47)
            continue
        assert facts["duration"] == pytest.approx(source["duration"], abs=1e-6)  # the last frame keeps its length
        assert facts["audio"] == source["audio"] == ("aac", 48000, 1)
        assert packet_times(path, "audio") == packet_times(clip, "audio")  # copied, packet for packet
    assert stream_facts(outputs["cutout.mov"])["size"] == (65, 47)
    assert stream_facts(outputs["overlay.mp4"])["size"] == (66, 48)  # yuv420p: one edge column and row repeated


def test_cutouts_carry_the_mask_as_alpha_and_zero_colour_under_it(tmp_path: Path, weights: list[str]):
    clip = make_clip(tmp_path / "clip.mp4", frames=4, audio=False)
    for fmt in ("mov", "webm"):
        run = clipseg("video", clip, "-p", "square", "-o", tmp_path / fmt, "--cutout", "--cutout-format", fmt,
                      "--no-overlay", *weights)
        assert run.code == 0, run.stderr
    masks = decoded_frames(tmp_path / "mov" / "clip.square.mask.mkv", "gray")
    prores = decoded_frames(tmp_path / "mov" / "clip.square.cutout.mov", "rgba")
    vp9 = decoded_frames(tmp_path / "webm" / "clip.square.cutout.webm", "rgba", codec="libvpx-vp9")
    assert len(prores) == len(vp9) == len(masks) == 4
    for mask, pro, web in zip(masks, prores, vp9, strict=True):
        assert 0 < (mask > 0).mean() < 1  # the fixture's mask has both
        np.testing.assert_array_equal(pro[..., 3], mask)  # ProRes 4444 keeps alpha losslessly
        assert pro[mask == 0, :3].max() <= 2  # colour zero under alpha 0 (ProRes rounds)
        assert np.abs(web[..., 3].astype(int) - mask).mean() < 8  # VP9's alpha is lossy
    assert stream_facts(tmp_path / "webm" / "clip.square.cutout.webm")["size"] == (64, 48)


def test_sound_that_webm_cannot_hold_is_reencoded_to_opus(tmp_path: Path, weights: list[str]):
    clip = make_clip(tmp_path / "clip.mp4", frames=6)
    run = clipseg("video", clip, "-p", "square", "-o", tmp_path / "out", "--cutout", "--cutout-format", "webm",
                  "--no-overlay", *weights)
    assert run.code == 0, run.stderr
    facts = stream_facts(tmp_path / "out" / "clip.square.cutout.webm")
    assert facts["audio"][0] == "opus"
    assert packet_times(tmp_path / "out" / "clip.square.cutout.webm", "audio")[-1] > 0.2


def test_png_frames_are_each_output_upright_at_its_size_and_count_in_reruns(tmp_path: Path, weights: list[str]):
    clip = make_clip(tmp_path / "clip.mp4", size=(65, 47), rotation=90, frames=4)
    out = tmp_path / "out"
    run = clipseg("video", clip, "-p", "square", "-o", out, "--cutout", "--png-frames", "--json", *weights)
    assert run.code == 0, run.stderr
    folders = run.records()[0]["png_frames"]
    assert sorted(folders) == ["cutout", "mask", "overlay"]
    masks = decoded_frames(out / "clip.square.mask.mkv", "gray")
    pngs = sorted(Path(folders["mask"]).iterdir())
    assert [p.name for p in pngs] == [f"{i:06d}.png" for i in range(4)]
    for mask, png in zip(masks, pngs, strict=True):
        np.testing.assert_array_equal(np.asarray(Image.open(png)), np.rot90(mask, 1))  # upright, bit for bit
    for kind, mode in (("overlay", "RGB"), ("cutout", "RGBA")):
        with Image.open(Path(folders[kind]) / "000003.png") as image:
            assert (image.size, image.mode) == ((47, 65), mode)  # upright, the overlay's padding dropped
    again = clipseg("video", clip, "-p", "square", "-o", out, "--cutout", "--png-frames", "--json", *weights)
    assert again.records()[0]["status"] == "skipped"
    shutil.rmtree(folders["overlay"])
    redone = clipseg("video", clip, "-p", "square", "-o", out, "--cutout", "--png-frames", "--json", *weights)
    assert redone.records()[0]["status"] == "ok" and Path(folders["overlay"], "000000.png").is_file()
