"""Manifests for clipseg train/eval: the records of `batch --json`, CSV, and one line per bad record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipseg_cli.errors import ClipSegError
from clipseg_cli.training.manifest import check_files, read_manifest, read_mask


def _image(path: Path, size=(8, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), 90, np.uint8)).save(path)
    return path


def _mask(path: Path, size=(8, 6), mode="L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.zeros((size[1], size[0]), np.uint8)
    array[1:3, 2:5] = 255
    Image.fromarray(array).convert(mode).save(path)
    return path


def test_batch_json_records_are_read_relative_to_the_manifest(tmp_path: Path) -> None:
    _image(tmp_path / "shoot" / "a.jpg")
    _mask(tmp_path / "masks" / "a.car.mask.png")
    batch_line = {"image": "shoot/a.jpg", "prompt": "red car", "status": "ok", "mask": "masks/a.car.mask.png",
                  "overlay": None, "cutout": None, "error": None, "reason": None, "coverage": 0.1,
                  "bbox": [2, 1, 5, 3], "mean_probability": 0.8}
    manifest = tmp_path / "results.jsonl"
    manifest.write_text(json.dumps(batch_line) + "\n\n", encoding="utf-8")
    parsed = read_manifest(manifest)
    assert parsed.problems == []
    [record] = parsed.records
    assert record.image == tmp_path / "shoot" / "a.jpg" and record.mask == tmp_path / "masks" / "a.car.mask.png"
    assert record.prompt == "red car"
    assert check_files(parsed.records) == (parsed.records, [])


def test_csv_with_the_three_columns(tmp_path: Path) -> None:
    _image(tmp_path / "a.png")
    _mask(tmp_path / "a.mask.png")
    (tmp_path / "data.csv").write_text('image,prompt,mask\na.png,"tree, left",a.mask.png\n', encoding="utf-8")
    [record] = read_manifest(tmp_path / "data.csv").records
    assert record.prompt == "tree, left" and record.mask == tmp_path / "a.mask.png"
    (tmp_path / "bad.csv").write_text("img,prompt\n", encoding="utf-8")
    with pytest.raises(ClipSegError, match=r"bad\.csv.*missing: image, mask"):
        read_manifest(tmp_path / "bad.csv")


def test_every_bad_record_is_named_in_one_line_with_its_file_and_reason(tmp_path: Path) -> None:
    _image(tmp_path / "good.png")
    _mask(tmp_path / "good.mask.png")
    _mask(tmp_path / "small.mask.png", size=(4, 3))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    lines = [
        {"image": "good.png", "prompt": "car", "mask": "good.mask.png"},
        "{not json",
        {"image": "good.png", "prompt": "car"},
        {"image": "x.jpg", "prompt": "car", "status": "failed", "mask": None, "error": "x.jpg: truncated"},
        {"image": "missing.png", "prompt": "car", "mask": "good.mask.png"},
        {"image": "good.png", "prompt": "car", "mask": "small.mask.png"},
        {"image": "broken.png", "prompt": "car", "mask": "good.mask.png"},
        {"image": "good.png", "prompt": "car", "mask": "nowhere.png"},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    parsed = read_manifest(manifest)
    good, problems = check_files(parsed.records)
    assert [r.where for r in good] == [f"{manifest} line 1"]
    problems = parsed.problems + problems
    expected = {
        2: "not valid JSON",
        3: "'mask' is missing",
        4: "batch failed on this image (x.jpg: truncated)",
        5: "missing.png: no such file",
        6: "small.mask.png: mask is 4x3, the image",
        7: "broken.png: ",
        8: "nowhere.png: no such file",
    }
    assert len(problems) == len(expected)
    for problem in problems:
        assert "\n" not in problem
        number = int(problem.split(" line ")[1].split(":")[0])
        assert problem.startswith(f"{manifest} line {number}: ") and expected[number] in problem, problem


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA"])
def test_masks_of_any_8_or_1_bit_mode(tmp_path: Path, mode: str) -> None:
    mask = read_mask(_mask(tmp_path / "m.png", mode=mode))
    assert mask.dtype == bool and mask.sum() == 6 and mask[1:3, 2:5].all()


def test_a_16_bit_mask_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    Image.fromarray(np.zeros((3, 4), np.uint16)).save(path)
    with pytest.raises(ClipSegError, match=r"deep\.png: mask must be an 8-bit or 1-bit image"):
        read_mask(path)
