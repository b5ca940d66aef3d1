"""Pixel-level tests of mask post-processing and prompt algebra (the visual prompt: test_visual_prompt.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from clipseg_cli.errors import ClipSegError
from clipseg_cli.postprocess import (
    PostProcess,
    combine,
    dilate,
    erode,
    gaussian_blur,
    gaussian_kernel,
    make_mask,
    remove_small_components,
    stats,
)


def square(h: int, w: int, y0: int, x0: int, size: int) -> np.ndarray:
    """HxW bool mask with one size x size square at (y0, x0)."""
    mask = np.zeros((h, w), dtype=bool)
    mask[y0 : y0 + size, x0 : x0 + size] = True
    return mask


def box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1) of the foreground, exclusive ends."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


# ---- dilate / erode ----------------------------------------------------------------------------


@pytest.mark.parametrize("px", [1, 2, 5, 13])
def test_dilate_grows_square_by_exactly_px(px: int) -> None:
    prob = square(60, 70, 20, 25, 8).astype(np.float32)
    mask = make_mask(prob, PostProcess(threshold=0.5, dilate=px))
    assert np.array_equal(mask, square(60, 70, 20 - px, 25 - px, 8 + 2 * px))


@pytest.mark.parametrize("px", [1, 3, 4])
def test_erode_shrinks_square_by_exactly_px(px: int) -> None:
    prob = square(40, 40, 10, 12, 9).astype(np.float32)
    mask = make_mask(prob, PostProcess(threshold=0.5, erode=px))
    assert np.array_equal(mask, square(40, 40, 10 + px, 12 + px, 9 - 2 * px))


def test_erode_removes_square_thinner_than_twice_px() -> None:
    assert not erode(square(20, 20, 5, 5, 4), 2).any()


def test_border_is_background_for_dilate_and_neutral_for_erode() -> None:
    corner = square(30, 30, 0, 0, 10)
    assert np.array_equal(dilate(corner, 3), square(30, 30, 0, 0, 13))
    # eroding a square in the corner only eats it from the inner sides
    assert np.array_equal(erode(corner, 3), square(30, 30, 0, 0, 7))
    assert erode(np.ones((12, 12), bool), 4).all()


def test_dilate_zero_is_identity() -> None:
    mask = np.random.default_rng(0).random((20, 30)) > 0.7
    assert np.array_equal(dilate(mask, 0), mask)
    assert np.array_equal(erode(mask, 0), mask)


# ---- min_area ------------------------------------------------------------------------------------


def test_min_area_drops_speck_keeps_blob() -> None:
    blob = square(50, 50, 5, 5, 10)  # 100 pixels
    speck = square(50, 50, 40, 40, 2)  # 4 pixels
    mask = remove_small_components(blob | speck, min_area=5)
    assert np.array_equal(mask, blob)


def test_min_area_keeps_diagonal_pair_as_one_component() -> None:
    mask = np.zeros((10, 10), bool)
    mask[3, 3] = mask[4, 4] = True  # touching only at a corner: one 8-connected component of 2
    assert np.array_equal(remove_small_components(mask, 2), mask)
    assert not remove_small_components(mask, 3).any()


def test_min_area_counts_u_shape_as_one_component() -> None:
    mask = np.zeros((12, 12), bool)
    mask[2:10, 2] = mask[2:10, 8] = mask[9, 2:9] = True  # 8 + 8 + 5 = 21 pixels
    assert np.array_equal(remove_small_components(mask, 21), mask)
    assert not remove_small_components(mask, 22).any()


def test_min_area_on_random_mask_keeps_only_large_components() -> None:
    mask = np.random.default_rng(1).random((64, 80)) > 0.6
    kept = remove_small_components(mask, 10)
    assert not (kept & ~mask).any()
    # a kept pixel's component is unchanged: dropping again removes nothing
    assert np.array_equal(remove_small_components(kept, 10), kept)
    # every pixel that was dropped had fewer than 10 connected pixels: growing by 1 and
    # intersecting never reaches a kept pixel
    dropped = mask & ~kept
    assert not (dilate(dropped, 1) & kept).any()


def test_min_area_after_dilate_merges_specks() -> None:
    specks = np.zeros((40, 40), np.float32)
    specks[20, 18] = specks[20, 22] = 1.0  # 1 pixel each, 4 apart
    post = PostProcess(threshold=0.5, dilate=2, min_area=30)
    mask = make_mask(specks, post)
    # each speck grows to 5x5; the two overlap into one 5x9 blob of 45 pixels
    assert mask.sum() == 45 and box_of(mask) == (18, 16, 23, 25)
    # far-apart specks grow to 25 pixels each and are dropped
    far = np.zeros((40, 40), np.float32)
    far[5, 5] = far[30, 30] = 1.0
    assert not make_mask(far, post).any()


# ---- threshold, invert, blur ---------------------------------------------------------------------


def test_threshold_is_inclusive_and_invert_is_last() -> None:
    prob = np.array([[0.39, 0.4, 0.41]], np.float32)
    assert make_mask(prob, PostProcess(threshold=0.4)).tolist() == [[False, True, True]]
    assert make_mask(prob, PostProcess(threshold=0.4, invert=True)).tolist() == [[True, False, False]]


def test_invert_after_min_area() -> None:
    prob = (square(30, 30, 2, 2, 2) | square(30, 30, 10, 10, 8)).astype(np.float32)
    mask = make_mask(prob, PostProcess(threshold=0.5, min_area=10, invert=True))
    assert np.array_equal(mask, ~square(30, 30, 10, 10, 8))


def test_blur_zero_is_identity() -> None:
    prob = np.random.default_rng(2).random((17, 23)).astype(np.float32)
    assert np.array_equal(gaussian_blur(prob, 0.0), prob)
    assert np.array_equal(make_mask(prob, PostProcess(threshold=0.5)), prob >= 0.5)


def test_blur_of_step_edge_is_monotone_and_symmetric() -> None:
    step = np.zeros((9, 40), np.float32)
    step[:, 20:] = 1.0
    out = gaussian_blur(step, 3.0)
    row = out[4]
    assert np.allclose(out, row[None])  # constant along the edge, rows unaffected by the border
    assert np.all(np.diff(row) >= -1e-7) and row[19] < 0.5 < row[20]
    assert np.allclose(row + row[::-1], 1.0, atol=1e-6)  # symmetric about the edge
    assert row[0] < 1e-6 and row[-1] > 1 - 1e-6


def test_blur_preserves_constants_and_mass() -> None:
    assert np.allclose(gaussian_blur(np.full((5, 7), 0.3, np.float32), 2.0), 0.3)
    impulse = np.zeros((41, 41), np.float32)
    impulse[20, 20] = 1.0
    out = gaussian_blur(impulse, 2.5)
    assert abs(out.sum() - 1.0) < 1e-5
    assert np.allclose(out, out.T, atol=1e-7) and np.allclose(out, out[::-1, ::-1], atol=1e-7)


def test_blur_then_threshold_smooths_a_notch() -> None:
    prob = square(40, 40, 10, 10, 20).astype(np.float32)
    prob[19:21, 10:14] = 0.0  # a thin notch cut into the square's left side
    sharp = make_mask(prob, PostProcess(threshold=0.5))
    smooth = make_mask(prob, PostProcess(threshold=0.5, blur=2.0))
    assert not sharp[20, 11] and smooth[20, 12]


def test_postprocess_rejects_bad_settings() -> None:
    with pytest.raises(ClipSegError, match="threshold"):
        PostProcess(threshold=0.0)
    with pytest.raises(ClipSegError, match="blur"):
        PostProcess(blur=-1.0)
    with pytest.raises(ClipSegError, match="min_area"):
        PostProcess(min_area=-3)


# ---- combine -----------------------------------------------------------------------------------


def test_union_of_disjoint_masks_is_their_sum() -> None:
    a = square(30, 30, 2, 2, 6).astype(np.float32) * 0.8
    b = square(30, 30, 15, 15, 9).astype(np.float32) * 0.6
    union = combine(np.stack([a, b]), union=True, negatives=None, threshold=0.4)
    assert union.shape == (1, 30, 30) and union.dtype == np.float32
    assert np.array_equal(union[0], np.maximum(a, b))
    assert np.array_equal(union[0], a + b)  # disjoint: max equals sum
    mask = make_mask(union[0], PostProcess(threshold=0.4))
    assert np.array_equal(mask, (a >= 0.4) | (b >= 0.4))
    assert mask.sum() == 36 + 81


def test_without_union_maps_stay_separate() -> None:
    probs = np.random.default_rng(3).random((3, 8, 9)).astype(np.float32)
    out = combine(probs, union=False, negatives=None, threshold=0.4)
    assert out.shape == (3, 8, 9) and np.array_equal(out, probs)


def test_negative_removes_exactly_the_overlap() -> None:
    positive = square(40, 40, 5, 5, 20).astype(np.float32) * 0.9
    negative = square(40, 40, 15, 15, 20).astype(np.float32) * 0.7
    out = combine(positive[None], union=True, negatives=negative[None], threshold=0.5)
    overlap = square(40, 40, 15, 15, 10)
    assert np.array_equal(out[0] > 0, (positive > 0) & ~overlap)
    assert np.all(out[0][(positive > 0) & ~overlap] == np.float32(0.9))


def test_negative_below_threshold_does_not_veto_and_applies_per_map() -> None:
    positive = np.full((2, 4, 4), 0.9, np.float32)
    weak = np.full((1, 4, 4), 0.39, np.float32)
    assert np.array_equal(combine(positive, union=False, negatives=weak, threshold=0.4), positive)
    strong = np.zeros((2, 4, 4), np.float32)
    strong[0, 0, 0] = 0.4  # fires at the threshold itself
    strong[1, 3, 3] = 0.95
    out = combine(positive, union=False, negatives=strong, threshold=0.4)
    assert out.shape == (2, 4, 4)
    assert out[0, 0, 0] == 0 and out[1, 0, 0] == 0 and out[0, 3, 3] == 0 and out[1, 3, 3] == 0
    assert (out > 0).sum() == 2 * 16 - 2 * 2


def test_combine_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="negatives"):
        combine(np.zeros((1, 4, 4)), union=True, negatives=np.zeros((1, 4, 5)), threshold=0.4)


# ---- stats -------------------------------------------------------------------------------------


def test_stats_on_known_mask() -> None:
    mask = square(10, 20, 2, 5, 4)
    prob = np.where(mask, 0.75, 0.1).astype(np.float32)
    prob[2, 5] = 0.25
    result = stats(mask, prob)
    assert result["coverage"] == 16 / 200
    assert result["bbox"] == [5, 2, 9, 6]
    assert result["mean_probability"] == pytest.approx((15 * 0.75 + 0.25) / 16)
    json.dumps(result)
    assert all(type(v) in (float, int) for v in result["bbox"] + [result["coverage"]])


def test_stats_on_empty_mask() -> None:
    result = stats(np.zeros((4, 4), bool), np.zeros((4, 4), np.float32))
    assert result == {"coverage": 0.0, "bbox": None, "mean_probability": None}


# ---- full resolution ---------------------------------------------------------------------------


def test_full_resolution_mask_runs() -> None:
    xx, yy = np.arange(4000, dtype=np.float32), np.arange(3000, dtype=np.float32)[:, None]
    prob = 0.5 + 0.5 * np.sin(xx / 150) * np.cos(yy / 200)
    post = PostProcess(threshold=0.6, blur=3.0, dilate=4, min_area=500, invert=False)
    mask = make_mask(prob, post)
    assert mask.shape == (3000, 4000) and mask.dtype == bool
    assert 0.05 < stats(mask, prob)["coverage"] < 0.5
    assert make_mask(prob, PostProcess(threshold=0.6, erode=4, min_area=500)).sum() < mask.sum()


# ---- dilate then erode, clamped radii ----------------------------------------------------------


def test_dilate_then_erode_is_a_closing() -> None:
    prob = square(40, 40, 10, 10, 16).astype(np.float32)
    prob[17:19, 17:19] = 0  # a 2x2 hole
    closed = make_mask(prob, PostProcess(threshold=0.5, dilate=2, erode=2))
    assert np.array_equal(closed, square(40, 40, 10, 10, 16))  # the hole is filled, the outline is where it was


def test_huge_radii_are_clamped_to_the_image_and_stay_exact() -> None:
    mask = square(30, 50, 5, 7, 3)
    assert dilate(mask, 10**9).all() and not erode(mask, 10**9).any()
    assert np.array_equal(dilate(mask, 10**9), dilate(mask, 50))
    assert erode(np.ones((30, 50), bool), 10**9).all()  # outside the image is foreground for erosion
    prob = np.random.default_rng(0).random((13, 21)).astype(np.float32)
    # a kernel wider than the image: the same as unbounded mirror padding (computed here in float64)
    for sigma in (4.0, 9.0, 30.0):
        kernel = gaussian_kernel(sigma).astype(np.float64)
        radius = len(kernel) // 2
        padded = np.pad(prob.astype(np.float64), radius, mode="reflect")
        rows = np.apply_along_axis(np.convolve, 0, padded, kernel, "valid")
        expected = np.apply_along_axis(np.convolve, 1, rows, kernel, "valid")
        assert np.abs(gaussian_blur(prob, sigma) - expected).max() < 1e-6
    # a huge sigma is the mirrored image's mean (edge rows and columns count once, the others twice)
    weights = [np.r_[1, np.full(n - 2, 2), 1] / (2 * n - 2) for n in prob.shape]
    assert np.allclose(gaussian_blur(prob, 1e12), weights[0] @ prob @ weights[1], atol=1e-6)


def mirrored_blur(prob: np.ndarray, sigma: float) -> np.ndarray:
    """The blur written out in float64: mirror padding (edge pixel not repeated), a kernel to 4 sigma."""
    kernel = gaussian_kernel(sigma).astype(np.float64)
    padded = np.pad(prob.astype(np.float64), len(kernel) // 2, mode="reflect")
    rows = np.apply_along_axis(np.convolve, 0, padded, kernel, "valid")
    return np.apply_along_axis(np.convolve, 1, rows, kernel, "valid")


def square_window_any(mask: np.ndarray, px: int, outside: bool) -> np.ndarray:
    """Whether a (2 px + 1)^2 window holds a foreground pixel, written out with an integral image."""
    padded = np.pad(mask, px, constant_values=outside).astype(np.int64)
    integral = np.pad(padded.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    k, (h, w) = 2 * px + 1, mask.shape
    sums = integral[k : k + h, k : k + w] - integral[:h, k : k + w] - integral[k : k + h, :w] + integral[:h, :w]
    return sums > 0


def test_blur_equals_the_mirrored_convolution() -> None:
    prob = np.random.default_rng(5).random((2, 61, 47)).astype(np.float32)
    for sigma in (0.5, 1.5, 4.0, 11.0):  # the last kernel is as wide as the image: the folded path
        blurred = gaussian_blur(prob, sigma)
        for plane, out in zip(prob, blurred, strict=True):
            assert np.abs(out - mirrored_blur(plane, sigma)).max() < 1e-6, sigma


@pytest.mark.parametrize("px", [1, 3, 96, 97, 140])  # both sides of OPENCV_MAX_RADIUS
def test_dilate_and_erode_equal_the_square_window_at_every_radius(px: int) -> None:
    sparse = np.random.default_rng(px).random((160, 230)) > 0.995  # specks to grow
    dense = np.random.default_rng(px + 1).random((160, 230)) > 0.0002  # few holes: erosion reaches the border
    for mask in (sparse, dense):
        assert np.array_equal(dilate(mask, px), square_window_any(mask, px, outside=False))
        assert np.array_equal(erode(mask, px), ~square_window_any(~mask, px, outside=False))


@pytest.mark.parametrize("blur", [float("inf"), float("nan"), -1.0])
def test_blur_must_be_a_finite_number(blur: float) -> None:
    with pytest.raises(ClipSegError, match="blur must be a finite number"):
        PostProcess(blur=blur)


# ---- through the command line: one rule for every output, bounded time and memory ---------------

SIZE = (96, 72)


@pytest.fixture
def cli(tmp_path, checkpoint):
    """Run ``segment photo "red car" -o a fresh folder`` at fp32; returns (probabilities, run)."""
    from clipseg_cli import Segmenter
    from helpers import clipseg, noise, save

    photo = save(noise(SIZE, seed=3), tmp_path / "photo.png")
    folders = iter(range(100))

    def run(*args: object) -> dict:
        out = tmp_path / f"out{next(folders)}"
        done = clipseg("segment", photo, "red car", "-o", out, "--weights", checkpoint, "--precision", "fp32",
                       "--json", *args)
        assert done.code == 0, done.stderr
        [record] = done.records()
        return record

    segmenter = Segmenter.from_pretrained(checkpoint, device="cpu", precision="fp32")
    return segmenter.predict(photo, "red car")[0], run


def grey(values: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(values, 0, 1) * 255).astype(np.uint8)


def written(record: dict, kind: str) -> np.ndarray:
    with Image.open(record[kind]) as image:
        return np.asarray(image)[..., 3] if kind == "cutout" else np.asarray(image)


def smallest_removing_min_area(mask: np.ndarray) -> int:
    """A min_area that drops some regions of the mask and keeps others."""
    for area in (4, 8, 16, 32, 64, 128, 256, 512):
        kept = remove_small_components(mask, area)
        if 0 < kept.sum() < mask.sum():
            return area
    raise AssertionError("the fixture's mask has no small and large regions")


@pytest.mark.slow
def test_soft_output_and_soft_cutout_follow_the_mask_steps(cli) -> None:
    prob, run = cli
    t = float(np.round(np.median(prob), 3))
    above = prob >= t
    area = smallest_removing_min_area(above)
    small = above & ~remove_small_components(above, area)
    grown = dilate(above, 2)
    expected = {  # the rule: m = blurred probability (1 - it when inverted), 0 where a mask step removed a pixel
        ("--invert",): np.float32(1) - prob,
        ("--blur", "2"): gaussian_blur(prob, 2.0),
        ("--invert", "--dilate", "2"): np.where(grown & ~above, 0, np.float32(1) - prob),
        ("--erode", "1"): np.where(above & ~erode(above, 1), 0, prob),
        ("--min-area", str(area)): np.where(small, 0, prob),
    }
    assert np.array_equal(grey(prob), written(run("--soft", "--no-overlay"), "mask"))  # no steps: the reference
    for args, m in expected.items():
        assert not np.array_equal(grey(m), grey(prob)), args  # each option matters
        record = run("-t", t, "--soft", "--cutout", *args)
        assert np.array_equal(written(record, "mask"), grey(m)), args
        assert np.array_equal(written(record, "cutout"), grey(m)), args
        binary = run("-t", t, "--cutout", *args)
        assert np.array_equal(written(binary, "cutout"), written(binary, "mask")), args  # the binary alpha is M


def test_statistics_and_overlay_use_the_same_mask_and_map(cli) -> None:
    prob, run = cli
    t = float(np.round(np.median(prob), 3))
    record = run("-t", t, "--invert", "--soft", "--cutout")
    mask = ~(prob >= t)
    assert record["coverage"] == pytest.approx(mask.mean())
    assert record["mean_probability"] == pytest.approx(float((1 - prob)[mask].mean()), abs=1e-6)
    overlay = np.asarray(Image.open(record["overlay"]))
    image = np.asarray(Image.open(record["image"]))
    assert np.array_equal((overlay != image).any(axis=2), mask & (overlay != image).any(axis=2))


def test_huge_radii_finish_at_once_with_the_right_mask(cli) -> None:
    # not timed: a radius the image cannot hold is cut to the image (an unclamped 10^7 px kernel never ends)
    prob, run = cli
    assert (written(run("--dilate", "10000000", "-t", "0.01"), "mask") == 255).all()
    blurred = written(run("--blur", "5000", "--soft", "--no-overlay"), "mask")
    assert np.abs(blurred.astype(int) - grey(gaussian_blur(prob, 5000.0)).astype(int)).max() == 0
    assert blurred.max() - blurred.min() <= 1  # as flat as the mirrored mean


def _peak_growth(action) -> int:
    """Bytes the process's peak resident memory rose above its current size while ``action`` ran (Linux)."""
    from pathlib import Path

    def kilobytes(field: str) -> int:
        line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
        return int(line.split()[1])

    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current size
    before = kilobytes("VmRSS:")
    action()
    return (kilobytes("VmHWM:") - before) * 1024


@pytest.mark.slow
@pytest.mark.skipif(not __import__("os").access("/proc/self/clear_refs", __import__("os").W_OK),
                    reason="needs Linux's resettable peak memory (/proc/self/clear_refs)")
def test_memory_per_image_does_not_grow_with_the_number_of_prompts(tmp_path, checkpoint) -> None:
    from helpers import clipseg, noise, save

    photo = save(noise((2000, 2000)), tmp_path / "big.png")  # 16 MB per float32 map
    prompts = [f"thing {i}" for i in range(30)]

    def segment(*args: str) -> None:
        done = clipseg("segment", photo, *args, "-o", tmp_path / "out", "--weights", checkpoint, "--no-overlay",
                       "--force", "-q")
        assert done.code == 0, done.stderr

    import ctypes

    libc = ctypes.CDLL(None)
    mmap_threshold = -3  # glibc's M_MMAP_THRESHOLD: blocks this large or larger are mmapped, freed at once
    set_threshold = getattr(libc, "mallopt", lambda option, value: 0)
    set_threshold(mmap_threshold, 1 << 20)  # so that resident memory follows live memory
    try:
        segment("warm up")
        one = _peak_growth(lambda: segment(prompts[0]))
        many = _peak_growth(lambda: segment(*prompts))
        union = _peak_growth(lambda: segment(*prompts, "--union", "-n", "sky", "-n", "road"))
    finally:
        set_threshold(mmap_threshold, 32 << 20)  # where glibc's own adaptive threshold ends up
    # 30 maps of 2000 x 2000 float32 are 480 MB; made a few at a time, about 90 MB is seen
    assert one < 150 << 20 and many < 150 << 20 and union < 150 << 20, (one >> 20, many >> 20, union >> 20)
