"""``--smooth``: flicker cut at least 3x on a still, noisy picture, a moving object's mask at most one frame behind,
a fresh start at scene cuts; and the per-frame API (`video_frames`), the path ``clipseg video`` takes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from video_clips import decoded_frames, make_clip

from clipseg_cli.postprocess import PostProcess, mask_and_map
from clipseg_cli.video.smoothing import PULL, Smoother, flicker

pytestmark = pytest.mark.usefixtures("offline")

SIZE = (48, 64)
STRENGTH = 0.8  # the strength the docs recommend
GREY = np.full((*SIZE, 3), 128, np.uint8)  # one picture: no scene cut


def masks_of(maps: list[np.ndarray], strength: float, threshold: float = 0.4) -> list[np.ndarray]:
    smoother = Smoother(strength) if strength else None
    post = PostProcess(threshold=threshold)
    return [mask_and_map(smoother(i, GREY, [m])[0] if smoother else m, post)[0] for i, m in enumerate(maps)]


def noisy_still(frames: int = 60, noise: float = 0.08, seed: int = 0) -> list[np.ndarray]:
    """A map that rises across the picture (many pixels near the threshold), with new sensor noise each frame."""
    rng = np.random.default_rng(seed)
    ramp = np.tile(np.linspace(0, 1, SIZE[1], dtype=np.float32), (SIZE[0], 1))
    return [np.clip(ramp + rng.normal(0, noise, SIZE).astype(np.float32), 0, 1) for _ in range(frames)]


def moving_square(frames: int = 14, speed: int = 3) -> list[np.ndarray]:
    maps = []
    for index in range(frames):
        m = np.full(SIZE, 0.05, np.float32)
        m[16:32, 4 + speed * index : 20 + speed * index] = 0.95
        maps.append(m)
    return maps


@pytest.mark.parametrize("threshold", [0.4, 0.5])
def test_smoothing_cuts_flicker_at_least_three_times_on_a_noisy_still(threshold: float):
    maps = noisy_still()
    raw, smoothed = flicker(masks_of(maps, 0, threshold)), flicker(masks_of(maps, STRENGTH, threshold))
    assert raw > 0.02  # the fixture flickers
    assert raw / smoothed >= 3, (raw, smoothed)


@pytest.mark.parametrize("threshold", [0.4, 0.5, 0.6])
def test_a_moving_objects_mask_lags_at_most_one_frame(threshold: float):
    maps, speed = moving_square(), 3
    for now, (raw, smoothed) in enumerate(zip(masks_of(maps, 0, threshold), masks_of(maps, STRENGTH, threshold),
                                              strict=True)):
        lag = np.argwhere(raw)[:, 1].mean() - np.argwhere(smoothed)[:, 1].mean()
        assert 0 <= lag <= speed, (now, lag)  # behind by at most one frame's motion
        previous = masks_of(maps, 0, threshold)[max(0, now - 1)]
        assert (smoothed <= (raw | previous)).all()  # nothing where the object was not in this frame or the last


def test_a_scene_cut_restarts_the_average():
    smoother = Smoother(0.9)
    dark, bright = np.zeros((*SIZE, 3), np.uint8), np.full((*SIZE, 3), 200, np.uint8)
    zeros, ones = np.zeros(SIZE, np.float32), np.ones(SIZE, np.float32)
    smoother(0, dark, [zeros])
    assert smoother(1, dark, [ones])[0].max() == pytest.approx(1 - PULL)  # averaged, the past pulling at most PULL
    assert (smoother(2, bright, [zeros])[0] == 0).all()  # a new shot: nothing of the last one
    assert smoother.cuts == [2]


def test_smooth_out_of_range_is_refused(tmp_path: Path, weights: list[str]):
    from helpers import clipseg

    clip = make_clip(tmp_path / "clip.mp4", frames=2)
    run = clipseg("video", clip, "-p", "square", "-o", tmp_path / "out", "--smooth", "1.5", *weights)
    assert run.code == 2 and "--smooth" in run.stderr


def test_video_frames_gives_each_frames_maps_and_the_cli_writes_its_masks(tmp_path: Path, checkpoint: Path):
    from clipseg_cli import Job, Segmenter
    from clipseg_cli.video import video_frames
    from helpers import clipseg

    clip = make_clip(tmp_path / "clip.mp4", frames=5, rotation=90)
    segmenter = Segmenter.from_pretrained(checkpoint)
    frames = list(video_frames(segmenter, clip, Job(["square"])))
    assert [frame.index for frame in frames] == list(range(5))
    assert frames[1].seconds == pytest.approx(1001 / 24000, abs=1e-4)
    upright = decoded_frames(clip)[0].shape[:2][::-1]
    for frame in frames:
        assert frame.maps[0].shape == upright and frame.maps[0].dtype == np.float32  # upright, as players show it
        np.testing.assert_allclose(frame.maps[0], segmenter.predict(frame.frame.rgb, ["square"])[0], rtol=1e-5,
                                   atol=1e-4)
    run = clipseg("video", clip, "-p", "square", "-o", tmp_path / "out", "--no-overlay", "--weights", checkpoint)
    assert run.code == 0, run.stderr
    written = decoded_frames(tmp_path / "out" / "clip.square.mask.mkv", "gray")
    for frame, mask in zip(frames, written, strict=True):
        np.testing.assert_array_equal(np.rot90(frame.masks[0], -1) * np.uint8(255), mask)
