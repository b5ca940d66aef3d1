"""CLI masks against the library's own probabilities: prompt order, union, negatives, threshold ties, EXIF.

Each test compares what ``clipseg`` writes with what ``Segmenter.predict`` (or its logits) says
the mask must be, on a fixture whose prompts give clearly different maps, so that a permuted,
ignored or off-by-one-step feature changes pixels.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from clipseg_cli import Segmenter
from clipseg_cli.predictor import upsample
from helpers import binary_mask, clipseg, noise, save

pytestmark = pytest.mark.usefixtures("offline")  # conftest: no network, no user cache

PROMPTS = ("red car", "tree", "dog")
LABELS = ("red-car", "tree", "dog")
SIZES = {"a": (70, 50), "b": (48, 64), "c": (64, 64), "d": (90, 40), "e": (33, 57)}  # batches of 2 and 3
THRESHOLD = 0.4


@pytest.fixture(scope="module")
def segmenter(checkpoint: Path) -> Segmenter:
    return Segmenter.from_pretrained(checkpoint, device="cpu", precision="fp32")


@pytest.fixture
def fresh(checkpoint: Path) -> Segmenter:
    """A Segmenter with no cached embeddings: a text embedded with other texts (padded to their length)
    can differ in the last bits, so threshold ties are checked on prompts embedded as the CLI does."""
    return Segmenter.from_pretrained(checkpoint, device="cpu", precision="fp32")


def assert_mask(mask: np.ndarray, prob: np.ndarray, name: object) -> None:
    """mask == prob >= THRESHOLD, except where prob is within float rounding of the threshold."""
    wrong = mask != (prob >= THRESHOLD)
    assert not (wrong & (np.abs(prob - THRESHOLD) > 1e-5)).any(), f"{name}: {wrong.sum()} pixels differ"


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of five random PNGs of different sizes."""
    folder = tmp_path_factory.mktemp("photos")
    for i, (stem, size) in enumerate(SIZES.items()):
        save(noise(size, seed=10 + i), folder / f"{stem}.png")
    return folder


def run(*args: object, weights: Path) -> None:
    outcome = clipseg(*args, "--weights", weights, "--precision", "fp32", "--no-overlay")
    assert outcome.code == 0, outcome.stderr


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [2, 3])
def test_each_prompt_gets_its_own_mask_in_batches_of_several_images(photos, tmp_path, checkpoint, segmenter,
                                                                    batch_size) -> None:
    prompts = [arg for prompt in PROMPTS for arg in ("-p", prompt)]
    run("batch", photos, *prompts, "-o", tmp_path, "--batch-size", batch_size, "-t", THRESHOLD, weights=checkpoint)
    for stem, size in SIZES.items():
        masks = [binary_mask(tmp_path / f"{stem}.{label}.mask.png", size) for label in LABELS]
        for prompt, mask in zip(PROMPTS, masks, strict=True):
            assert_mask(mask, segmenter.predict(photos / f"{stem}.png", prompt)[0], (stem, prompt))
        assert not np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[1], masks[2])


def only(paths) -> Path:
    """The one path of a glob (names of unions and negatives end in a hash of the prompts)."""
    found = list(paths)
    assert len(found) == 1, found
    return found[0]


def test_union_is_the_maximum_of_every_prompts_map(photos, tmp_path, checkpoint, segmenter) -> None:
    run("batch", photos, "-p", "red car", "-p", "tree", "--union", "-o", tmp_path, "--batch-size", 2,
        "-t", THRESHOLD, weights=checkpoint)
    for stem, size in SIZES.items():
        probs = segmenter.predict(photos / f"{stem}.png", ["red car", "tree"])
        union = binary_mask(only(tmp_path.glob(f"{stem}.union-red-car-tree-*.mask.png")), size)
        assert_mask(union, probs.max(0), stem)
        assert not np.array_equal(union, probs[0] >= THRESHOLD)  # the second prompt adds pixels


def test_negatives_veto_where_any_of_them_fires(photos, tmp_path, checkpoint, segmenter) -> None:
    run("batch", photos, "-p", "red car", "-n", "tree", "-n", "dog", "-o", tmp_path, "--batch-size", 3,
        "-t", THRESHOLD, weights=checkpoint)
    for stem, size in SIZES.items():
        probs = segmenter.predict(photos / f"{stem}.png", ["red car", "tree", "dog"])
        positive, *negatives = probs >= THRESHOLD
        vetoed = negatives[0] | negatives[1]
        result = binary_mask(only(tmp_path.glob(f"{stem}.red-car-not-tree-dog-*.mask.png")), size)
        assert_mask(result, np.where(vetoed, 0, probs[0]), stem)
        assert (positive & vetoed).any() and (positive & negatives[1] & ~negatives[0]).any()  # both veto something


def pick(values: np.ndarray, low: float, high: float, where: np.ndarray | None = None) -> tuple[int, int]:
    """(y, x) of the first pixel whose value lies strictly between low and high (and where ``where``)."""
    ok = (values > low) & (values < high) & (True if where is None else where)
    ys, xs = np.nonzero(ok)
    assert len(ys), "no pixel in range"
    return int(ys[len(ys) // 2]), int(xs[len(xs) // 2])


@pytest.mark.slow
def test_threshold_keeps_a_pixel_exactly_at_it(photos, tmp_path, checkpoint, fresh) -> None:
    """-t equal to a pixel's probability keeps that pixel (>=), on the probability path (--json)."""
    prob = fresh.predict(photos / "a.png", "red car")[0]
    y, x = pick(prob, 0.3, 0.7)
    threshold = float(prob[y, x])  # a float32 value, exactly representable as the option's float
    outcome = clipseg("segment", photos / "a.png", "red car", "-o", tmp_path, "-t", repr(threshold), "--json",
                      "--weights", checkpoint, "--precision", "fp32", "--no-overlay")
    assert outcome.code == 0, outcome.stderr
    mask = binary_mask(tmp_path / "a.red-car.mask.png", SIZES["a"])
    assert mask[y, x] and np.array_equal(mask, prob >= threshold)


def test_a_negative_exactly_at_the_threshold_vetoes(photos, tmp_path, checkpoint, fresh) -> None:
    positive, negative = fresh.predict(photos / "a.png", ["red car", "tree"])  # embedded together, as the CLI does
    y, x = pick(negative, 0.3, 0.7, where=positive > negative + 0.01)
    threshold = float(negative[y, x])
    run("segment", photos / "a.png", "red car", "-n", "tree", "-o", tmp_path, "-t", repr(threshold),
        weights=checkpoint)
    mask = binary_mask(only(tmp_path.glob("a.red-car-not-tree-*.mask.png")), SIZES["a"])
    assert not mask[y, x] and np.array_equal(mask, (positive >= threshold) & ~(negative >= threshold))


def test_logit_threshold_keeps_a_pixel_exactly_at_it(photos, tmp_path, checkpoint, fresh) -> None:
    """Plain masks are thresholded on logits: a pixel whose logit is exactly logit(t) is kept (>=)."""
    logits = upsample(fresh.logits([Image.open(photos / "a.png").convert("RGB")], ["red car"])[0],
                      SIZES["a"])[0].numpy()
    y, x = pick(logits, -1.0, 1.0, where=logits != 0)
    value = float(logits[y, x])
    threshold = 1 / (1 + math.exp(-value))
    assert np.float32(math.log(threshold / (1 - threshold))) == logits[y, x]  # the CLI's cut is this pixel's logit
    run("segment", photos / "a.png", "red car", "-o", tmp_path, "-t", repr(threshold), weights=checkpoint)
    mask = binary_mask(tmp_path / "a.red-car.mask.png", SIZES["a"])
    assert mask[y, x] and np.array_equal(mask, logits >= logits[y, x])


@pytest.mark.slow
def test_a_rotated_jpeg_gets_the_mask_of_its_upright_pixels(tmp_path, checkpoint, segmenter) -> None:
    folder = tmp_path / "in"
    for orientation in (3, 6, 8):
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = save(noise((64, 40), seed=orientation), folder / f"turned{orientation}.jpg", exif=exif, quality=95)
        with Image.open(path) as stored:
            upright = ImageOps.exif_transpose(stored).convert("RGB")  # the same decoded pixels, turned
            raw = np.asarray(stored.convert("RGB"))
        save(upright, folder / f"upright{orientation}.png")
        if orientation == 3:  # same size turned or not: only the pixels tell a forgotten rotation
            assert not np.array_equal(segmenter.predict(raw, "red car")[0] >= THRESHOLD,
                                      segmenter.predict(upright, "red car")[0] >= THRESHOLD)
    run("batch", folder, "-p", "red car", "-o", tmp_path / "out", "-t", THRESHOLD, weights=checkpoint)
    for orientation in (3, 6, 8):
        size = (64, 40) if orientation == 3 else (40, 64)
        turned = binary_mask(tmp_path / "out" / f"turned{orientation}.red-car.mask.png", size)
        assert np.array_equal(turned, binary_mask(tmp_path / "out" / f"upright{orientation}.red-car.mask.png", size))
