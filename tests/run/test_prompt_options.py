"""Prompt algebra, mask post-processing and image prompts through the command line, checked on pixels."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from helpers import binary_mask, clipseg, noise, pixels, save

pytestmark = pytest.mark.usefixtures("offline")  # conftest: no network, no user cache

SIZE = (96, 72)


@pytest.fixture
def run(tmp_path: Path, checkpoint: Path):
    """segment a fixed photo into a fresh folder; returns (outcome, folder)."""
    photo = save(noise(SIZE, seed=3), tmp_path / "photo.png")
    counter = iter(range(100))

    def segment(*args: object):
        out = tmp_path / f"out{next(counter)}"
        outcome = clipseg("segment", photo, *args, "-o", out, "--weights", checkpoint, "--precision", "fp32",
                          "--no-overlay", "--json")
        assert outcome.code == 0, outcome.stderr
        return outcome, out

    return segment


@pytest.fixture
def threshold(run) -> float:
    """A threshold that splits the random model's map of 'red car' into two sizeable parts."""
    _, out = run("red car", "tree", "--soft")
    soft = pixels(out / "photo.red-car.mask.png", "L", SIZE) / 255
    return float(np.round(np.median(soft), 2))


def mask(folder: Path, label: str) -> np.ndarray:
    return binary_mask(folder / f"photo.{label}.mask.png", SIZE)


def test_union_is_the_or_of_the_prompts_masks(run, threshold):
    _, single = run("red car", "tree", "-t", threshold)
    outcome, _ = run("red car", "tree", "-t", threshold, "--union")
    [record] = outcome.records()
    assert re.fullmatch(r"photo\.union-red-car-tree-[0-9a-f]{6}\.mask\.png", Path(record["mask"]).name)
    combined = binary_mask(record["mask"], SIZE)
    assert np.array_equal(combined, mask(single, "red-car") | mask(single, "tree"))
    assert 0 < combined.mean() < 1


def test_negative_removes_exactly_where_it_fires(run, threshold):
    _, single = run("red car", "tree", "-t", threshold)
    outcome, _ = run("red car", "-n", "tree", "-t", threshold)
    [record] = outcome.records()
    assert re.fullmatch(r"photo\.red-car-not-tree-[0-9a-f]{6}\.mask\.png", Path(record["mask"]).name)
    result = binary_mask(record["mask"], SIZE)
    assert np.array_equal(result, mask(single, "red-car") & ~mask(single, "tree"))


@pytest.mark.slow
def test_dilate_erode_invert_min_area(run, threshold):
    _, plain = run("red car", "-t", threshold)
    base = mask(plain, "red-car")
    _, grown = run("red car", "-t", threshold, "--dilate", "2")
    padded = np.pad(base, 2)
    expected = np.zeros_like(base)
    for dy in range(5):
        for dx in range(5):
            expected |= padded[dy : dy + SIZE[1], dx : dx + SIZE[0]]
    assert np.array_equal(mask(grown, "red-car"), expected)
    _, shrunk = run("red car", "-t", threshold, "--erode", "1")
    assert (mask(shrunk, "red-car") <= base).all() and mask(shrunk, "red-car").sum() < base.sum()
    _, inverted = run("red car", "-t", threshold, "--invert")
    assert np.array_equal(mask(inverted, "red-car"), ~base)
    _, cleaned = run("red car", "-t", threshold, "--min-area", str(SIZE[0] * SIZE[1]))
    assert not mask(cleaned, "red-car").any()  # no region is as large as the whole image


def test_blur_smooths_the_mask(run, threshold):
    _, plain = run("red car", "-t", threshold)
    _, blurred = run("red car", "-t", threshold, "--blur", "3")
    def edges(m: np.ndarray) -> int:
        return int((m[1:] != m[:-1]).sum() + (m[:, 1:] != m[:, :-1]).sum())
    assert edges(mask(blurred, "red-car")) < edges(mask(plain, "red-car"))


def test_template_averages_and_identity_template_changes_nothing(run):
    _, out_plain = run("red car", "--soft")
    _, out_same = run("red car", "--soft", "--template", "{}")
    assert np.array_equal(pixels(out_plain / "photo.red-car.mask.png", "L", SIZE),
                          pixels(out_same / "photo.red-car.mask.png", "L", SIZE))
    _, out_tpl = run("red car", "--soft", "--template", "a photo of a {}.", "--template", "{} in the street")
    assert not np.array_equal(pixels(out_plain / "photo.red-car.mask.png", "L", SIZE),
                              pixels(out_tpl / "photo.red-car.mask.png", "L", SIZE))


def test_json_statistics_describe_the_mask(run, threshold):
    outcome, out = run("red car", "-t", threshold)
    (record,) = outcome.records()
    written = mask(out, "red-car")
    ys, xs = np.nonzero(written)
    assert record["coverage"] == pytest.approx(written.mean())
    assert record["bbox"] == [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    assert 0 < record["mean_probability"] <= 1


@pytest.mark.slow
def test_image_prompt_is_cropped_blurred_and_darkened_around_its_mask(run, tmp_path, checkpoint):
    from PIL import Image

    from clipseg_cli import Segmenter
    from clipseg_cli.imaging.visual_prompt import visual_prompt
    from clipseg_cli.imaging.writing import probability_to_image

    reference = save(noise((80, 60), seed=9), tmp_path / "ref.png")
    object_mask = np.zeros((60, 80), np.uint8)
    object_mask[20:40, 30:50] = 255
    mask_file = save(Image.fromarray(object_mask), tmp_path / "ref-object.png")
    outcome, _ = run("--prompt-image", reference, "--prompt-mask", mask_file, "--soft")
    [record] = outcome.records()
    assert record["prompt"] == "image ref"
    segmenter = Segmenter.from_pretrained(checkpoint, device="cpu", precision="fp32")
    with Image.open(reference) as ref:
        prepared = visual_prompt(ref, object_mask)
        raw = ref.convert("RGB")
    assert not segmenter.embed([prepared]).equal(segmenter.embed([raw]))
    expected = probability_to_image(segmenter.predict(tmp_path / "photo.png", [prepared])[0])
    assert np.array_equal(pixels(record["mask"], "L", SIZE), np.asarray(expected))


def test_prompt_mask_needs_its_image(tmp_path, checkpoint):
    photo = save(noise(SIZE), tmp_path / "photo.png")
    outcome = clipseg("segment", photo, "car", "--prompt-mask", photo, "--weights", checkpoint)
    assert outcome.code == 2 and "one --prompt-mask per --prompt-image" in outcome.stderr
