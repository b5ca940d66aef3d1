"""Reruns reuse an output only when its fingerprint matches: same input bytes, prompt, weights, precision, settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import binary_mask, clipseg, noise, pixels, save

SIZE = (64, 48)
REDONE = "existing output(s) were made from other inputs or settings; redoing them"


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    return save(noise(SIZE, seed=5), tmp_path / "in" / "photo.png")


@pytest.fixture
def segment(photo: Path, tmp_path: Path, checkpoint: Path):
    """Run ``segment photo "red car" -o out --json`` with more options; returns (outcome, its one record)."""

    def run(*args: object, weights: Path = checkpoint):
        outcome = clipseg("segment", photo, "red car", "-o", tmp_path / "out", "--weights", weights, "--json",
                          "--precision", "fp32", *args)
        assert outcome.code == 0, outcome.stderr
        [record] = outcome.records()
        return outcome, record

    return run


def test_second_folder_with_the_same_names_gets_masks_of_its_own(tmp_path: Path, checkpoint: Path) -> None:
    save(noise((40, 30), seed=1), tmp_path / "a" / "IMG_0001.png")
    save(noise((50, 20), seed=2), tmp_path / "b" / "IMG_0001.png")
    out = tmp_path / "out"
    for folder in ("a", "b"):
        done = clipseg("batch", tmp_path / folder, "-p", "car", "-o", out, "--weights", checkpoint, "--json", "-q")
        assert done.code == 0, done.stderr
    [record] = done.records()
    assert (record["status"], record["reason"]) == ("ok", "input file changed")
    binary_mask(out / "IMG_0001.car.mask.png", (50, 20))
    assert pixels(out / "IMG_0001.car.overlay.png", "RGB", (50, 20)).shape == (20, 50, 3)
    mask = out / "IMG_0001.car.mask.png"
    assert done.stderr.strip() == f"clipseg: 1 {REDONE} (first: {mask}: input file changed)"  # even with -q


def test_plain_rerun_skips_and_keeps_the_files(segment) -> None:
    _, first = segment()
    stamp = Path(first["mask"]).stat().st_mtime_ns
    again, record = segment()
    assert (record["status"], record["reason"]) == ("skipped", None)
    assert Path(record["mask"]).stat().st_mtime_ns == stamp
    assert REDONE not in again.stderr


@pytest.mark.slow
@pytest.mark.parametrize(("change", "reason"), [
    (["-t", "0.6"], "settings changed (threshold)"),
    (["--blur", "1.5"], "settings changed (blur)"),
    (["--dilate", "1"], "settings changed (dilate)"),
    (["--erode", "1"], "settings changed (erode)"),
    (["--min-area", "9"], "settings changed (min_area)"),
    (["--invert"], "settings changed (invert)"),
    (["--soft"], "output kind changed"),
    (["--precision", "bf16"], "precision changed"),
])
def test_rerun_with_other_settings_redoes(segment, change: list[str], reason: str) -> None:
    _, first = segment()
    before = Path(first["mask"]).read_bytes()
    outcome, record = segment(*change)
    assert (record["status"], record["reason"]) == ("ok", reason)
    assert f"1 {REDONE} (first: {record['mask']}: {reason})" in outcome.stderr
    assert Path(record["mask"]).read_bytes() != before  # the record at least differs
    assert segment(*change)[1]["status"] == "skipped"


def test_rerun_with_other_weights_redoes(segment, tmp_path: Path) -> None:
    from factory import build_checkpoint

    other = build_checkpoint(tmp_path / "other-weights", "plain", seed=1)
    segment()
    _, record = segment(weights=other)
    assert (record["status"], record["reason"]) == ("ok", "weights changed")
    assert segment(weights=other)[1]["status"] == "skipped"


def test_a_file_written_by_another_tool_is_redone_never_skipped(segment) -> None:
    _, first = segment()
    mask_path = Path(first["mask"])
    original = binary_mask(mask_path, SIZE)
    Image.new("L", SIZE, 0).save(mask_path)  # same name, same size, no fingerprint
    _, record = segment()
    assert (record["status"], record["reason"]) == ("ok", "written by another tool")
    assert np.array_equal(binary_mask(mask_path, SIZE), original)


def test_an_overlay_written_by_another_tool_is_redone(segment) -> None:
    _, first = segment()
    Image.new("RGB", SIZE).save(first["overlay"])
    _, record = segment()
    assert (record["status"], record["reason"]) == ("ok", "written by another tool")
    assert pixels(record["overlay"], "RGB", SIZE).any()


def test_an_edited_input_redoes_and_a_missing_overlay_is_written(segment, photo: Path) -> None:
    segment("--no-overlay")
    _, record = segment()  # the mask matches; only the overlay is new
    assert (record["status"], record["reason"]) == ("ok", None)
    save(noise(SIZE, seed=6), photo)
    _, record = segment()
    assert (record["status"], record["reason"]) == ("ok", "input file changed")


@pytest.mark.slow
def test_force_redoes_without_reading_the_files(segment) -> None:
    _, first = segment()
    Image.new("L", SIZE, 0).save(first["mask"])
    _, record = segment("--force")
    assert (record["status"], record["reason"]) == ("ok", None)


def test_the_fingerprint_is_a_readable_png_text_chunk(segment, photo: Path) -> None:
    import hashlib

    _, record = segment("--cutout", "--soft", "-t", "0.5")
    for kind, output in (("soft mask", "mask"), ("overlay", "overlay"), ("soft cutout", "cutout")):
        with Image.open(record[output]) as image:
            stored = json.loads(image.text["clipseg"])
        assert stored["output"] == kind
        assert stored["input"] == hashlib.sha256(photo.read_bytes()).hexdigest()
        assert (stored["prompt"], stored["precision"], stored["device"]) == ("red car", "exact", "cpu")
        assert stored["settings"]["threshold"] == 0.5 and stored["settings"]["soft"] is True
        assert len(stored["digest"]) == 64


@pytest.mark.slow
def test_changed_preprocessing_of_the_modern_layout_redoes_the_outputs(photo: Path, tmp_path: Path,
                                                                         checkpoint: Path) -> None:
    from factory import save_modern_layout

    modern = save_modern_layout(checkpoint, tmp_path / "modern")
    args = ["segment", photo, "car", "-o", tmp_path / "out", "--weights", modern, "--json"]
    assert clipseg(*args).records()[0]["status"] == "ok"
    assert clipseg(*args).records()[0]["status"] == "skipped"
    config_path = modern / "processor_config.json"
    config = json.loads(config_path.read_text())
    config["image_processor"]["image_mean"] = [0.5, 0.5, 0.5]  # same weights, other preprocessing
    config_path.write_text(json.dumps(config))
    (record,) = clipseg(*args).records()
    assert (record["status"], record["reason"]) == ("ok", "weights changed")


def test_every_result_has_one_record_shape_in_the_api_and_the_json(photo: Path, tmp_path: Path,
                                                                   checkpoint: Path) -> None:
    from clipseg_cli import Job, Segmenter

    segmenter = Segmenter.from_pretrained(str(checkpoint), precision="fp32")
    keys = {"coverage", "bbox", "mean_probability"}
    shapes = []
    for _ in range(2):  # written, then skipped
        [result] = Job(["red car"]).segment(segmenter, [photo], output_dir=tmp_path / "api")
        shapes.append((result.status, set(result.stats)))
        result.stats["coverage"]  # the README's example on a rerun
    assert shapes == [("ok", keys), ("skipped", keys)]
    (tmp_path / "in" / "broken.png").write_bytes(b"not a png")
    lines = [clipseg("batch", tmp_path / "in", "-p", "red car", "-o", tmp_path / "cli", "--weights", checkpoint,
                     "--json", *extra).records() for extra in ([], [])]
    statuses = sorted(record["status"] for records in lines for record in records)
    assert statuses == ["failed", "failed", "ok", "skipped"]
    assert len({tuple(sorted(record)) for records in lines for record in records}) == 1
    assert all(keys <= set(record) for records in lines for record in records)
