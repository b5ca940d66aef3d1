"""Output names: unique per prompt text across runs, readable in every script, within 255 bytes."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest

from clipseg_cli.run.outputs import OutputPlan, label_for, output_paths
from helpers import binary_mask, clipseg, noise, save

SIZE = (40, 32)
ODD_PROMPTS = ["", " ", "🐕", "🐈", "犬", "猫", "собака", "Red Car", "red car", "red-car", "red  car", "prompt"]


def short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:6]


@pytest.mark.parametrize(("prompt", "label"), [
    ("red car", "red-car"),
    ("犬", "犬"),
    ("собака", "собака"),
    ("prompt", "prompt"),
    ("Red Car", f"red-car-{short('Red Car')}"),
    ("red-car", f"red-car-{short('red-car')}"),
    ("red  car", f"red-car-{short('red  car')}"),
    ("", f"prompt-{short('')}"),
    (" ", f"prompt-{short(' ')}"),
    ("🐕", f"prompt-{short('🐕')}"),
    ("naïve café", "naïve-café"),
])
def test_label_keeps_every_script_and_hashes_what_it_loses(prompt: str, label: str) -> None:
    assert label_for(prompt) == label


def test_long_labels_keep_60_characters_and_a_hash() -> None:
    long = "x" * 70
    assert label_for(long) == "x" * 53 + "-" + short(long)
    assert label_for(long) != label_for("x" * 71)


def test_odd_prompts_get_distinct_readable_files_that_are_stable_across_runs(tmp_path: Path, checkpoint: Path) -> None:
    photo = save(noise(SIZE), tmp_path / "photo.png")
    args = ["segment", photo, *ODD_PROMPTS, "-o", tmp_path / "out", "--weights", checkpoint, "--json", "--no-overlay"]
    first = clipseg(*args)
    assert first.code == 0, first.stderr
    masks = [Path(record["mask"]).name for record in first.records()]
    assert len(set(masks)) == len(ODD_PROMPTS) == len(os.listdir(tmp_path / "out"))
    assert {"photo.犬.mask.png", "photo.猫.mask.png", "photo.собака.mask.png", "photo.red-car.mask.png"} <= set(masks)
    again = clipseg(*args)
    assert [(Path(r["mask"]).name, r["status"]) for r in again.records()] == [(m, "skipped") for m in masks]


def test_a_later_prompt_never_takes_an_earlier_prompts_mask(tmp_path: Path, checkpoint: Path) -> None:
    photo = save(noise(SIZE), tmp_path / "photo.png")
    for prompt in ("猫", "犬", "🐕", "🐈"):
        done = clipseg("segment", photo, prompt, "--weights", checkpoint, "--json")
        assert [r["status"] for r in done.records()] == ["ok"], done.stdout


def test_a_prompt_given_twice_is_run_once(tmp_path: Path, checkpoint: Path) -> None:
    photo = save(noise(SIZE), tmp_path / "photo.png")
    done = clipseg("segment", photo, "car", "car 2", "car", "--weights", checkpoint, "--json")
    assert [(r["prompt"], Path(r["mask"]).name) for r in done.records()] == [
        ("car", "photo.car.mask.png"), ("car 2", "photo.car-2.mask.png")]


def test_long_prompts_and_long_input_names_fit_in_255_bytes(tmp_path: Path, checkpoint: Path) -> None:
    save(noise(SIZE), tmp_path / "in" / ("ü" * 120 + ".png"))  # 244 bytes
    save(noise(SIZE), tmp_path / "in" / ("a" * 236 + ".png"))  # 240 characters
    args = ["batch", tmp_path / "in", "-p", "犬" * 100, "-p", "a" * 300, "-p", "car",  # 300 bytes each
            "-o", tmp_path / "out", "--weights", checkpoint, "--json", "--cutout"]
    done = clipseg(*args)
    assert done.code == 0, done.stderr
    records = done.records()
    assert len(records) == 6 and {r["status"] for r in records} == {"ok"}
    names = [Path(r[kind]).name for r in records for kind in ("mask", "overlay", "cutout")]
    assert len(set(names)) == len(names)
    assert max(len(name.encode()) for name in names) <= 255
    for record in records:
        binary_mask(record["mask"], SIZE)
    again = clipseg(*args)
    assert [Path(r["mask"]).name for r in again.records()] == [Path(r["mask"]).name for r in records]
    assert {r["status"] for r in again.records()} == {"skipped"}


def test_shortened_names_keep_a_readable_start_and_differ_by_their_end(tmp_path: Path) -> None:
    plan = OutputPlan(overlay=True, cutout=True)
    one = output_paths(tmp_path, "b" * 250 + "1", "car", plan)
    two = output_paths(tmp_path, "b" * 250 + "2", "car", plan)
    for paths in (one, two):
        for path in paths.values():
            assert len(path.name.encode()) <= 255 and path.name.startswith("b" * 200)
            assert re.fullmatch(r"b+-[0-9a-f]{6}\.car\.(mask|overlay|cutout)\.png", path.name)
    assert one["mask"] != two["mask"]
    assert output_paths(tmp_path, "photo", "car", plan)["mask"].name == "photo.car.mask.png"


def test_an_example_image_with_another_mask_gets_another_name(tmp_path: Path, checkpoint: Path) -> None:
    import numpy as np
    from PIL import Image

    photo = save(noise(SIZE), tmp_path / "photo.png")
    ref = save(noise((48, 40), seed=5), tmp_path / "ref.png")
    names = []
    for i, box in enumerate([(4, 4, 30, 20), (10, 12, 40, 36)]):
        mask = np.zeros((40, 48), np.uint8)
        mask[box[1] : box[3], box[0] : box[2]] = 255
        Image.fromarray(mask).save(tmp_path / f"m{i}.png")
        out = tmp_path / "out"
        outcome = clipseg("segment", photo, "--prompt-image", ref, "--prompt-mask", tmp_path / f"m{i}.png",
                          "-o", out, "--no-overlay", "--weights", checkpoint, "--json")
        assert outcome.code == 0, outcome.stderr
        (record,) = outcome.records()
        assert record["status"] == "ok" and Path(record["mask"]).name.startswith("photo.image-ref-")
        names.append(record["mask"])
    assert names[0] != names[1]
