"""--overlay-combined: one overlay per image with every prompt's mask in its colour and a legend, through the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from clipseg_cli.imaging.writing import PALETTE
from factory import PROBE_TEXTS, probe_image
from helpers import binary_mask, clipseg, pixels, save

SIZE = (192, 160)
PROMPTS = (*PROBE_TEXTS, "a dog")
LEGEND_ROWS = 8 + round(1.3 * 11 * len(PROMPTS)) + 2  # the legend's box: 11-pixel lines on a small image


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    return save(probe_image(0).resize(SIZE), tmp_path / "in" / "photo.png")


def _run(command: str, source: Path, checkpoint: Path, *args: object) -> tuple[list[dict], str]:
    done = clipseg(command, source, *args, "--overlay-combined", "--overlay-alpha", "1", "--weights", checkpoint,
                   "--precision", "fp32", "--json")
    assert done.code == 0, done.stderr
    return done.records(), done.stderr


def _assert_every_prompt_drawn(records: list[dict], prompts: tuple[str, ...]) -> Path:
    """The combined file that every record names shows each prompt's mask in its palette colour, and a legend."""
    [combined] = {record["combined_overlay"] for record in records}
    assert Path(combined).name == "photo.all_prompts.overlay.png"
    drawn = pixels(combined, "RGB", SIZE)
    masks = [binary_mask(record["mask"], SIZE) for record in records]
    assert [record["prompt"] for record in records] == list(prompts)
    for index, mask in enumerate(masks):
        # inside this mask, off its outermost pixels, under no later prompt's mask and below the legend
        later = np.logical_or.reduce([np.zeros_like(mask), *masks[index + 1 :]])
        shown = ndimage.binary_erosion(mask, np.ones((3, 3))) & ~later
        shown[:LEGEND_ROWS] = False
        assert shown.sum() > 20, f"fixture: prompt {index} has too few pixels of its own"
        assert (drawn[shown] == PALETTE[index]).all(axis=1).all()
    legend = drawn[:LEGEND_ROWS, : SIZE[0] // 2]
    assert (legend == 255).all(axis=2).any() and (legend == 0).all(axis=2).any()  # a white box with black text
    assert {PALETTE[i] for i in range(len(prompts))} <= {tuple(p) for p in legend.reshape(-1, 3)}  # swatches
    return Path(combined)


@pytest.mark.slow
def test_segment_writes_one_combined_overlay_that_a_rerun_skips(photo: Path, checkpoint: Path) -> None:
    out = photo.parent.parent / "out"
    records, _ = _run("segment", photo, checkpoint, *PROMPTS, "-o", out)
    combined = _assert_every_prompt_drawn(records, PROMPTS)
    assert sorted(path.name for path in out.glob("*.all_prompts.*")) == [combined.name]
    before = (combined.read_bytes(), combined.stat().st_mtime_ns)

    records, stderr = _run("segment", photo, checkpoint, *PROMPTS, "-o", out)
    assert {record["status"] for record in records} == {"skipped"}
    assert "0 mask(s) written, 3 skipped" in stderr
    assert (combined.read_bytes(), combined.stat().st_mtime_ns) == before

    records, _ = _run("segment", photo, checkpoint, *PROMPTS, "-o", out, "--force")
    assert {record["status"] for record in records} == {"ok"}
    assert combined.stat().st_mtime_ns != before[1]


@pytest.mark.slow
def test_a_deleted_combined_overlay_or_a_new_threshold_redoes_it(photo: Path, checkpoint: Path) -> None:
    records, _ = _run("segment", photo, checkpoint, *PROMPTS)
    combined = Path(records[0]["combined_overlay"])
    combined.unlink()
    records, _ = _run("segment", photo, checkpoint, *PROMPTS)
    assert {(record["status"], record["reason"]) for record in records} == {("ok", "combined overlay missing")}
    _assert_every_prompt_drawn(records, PROMPTS)
    before = combined.read_bytes()
    records, _ = _run("segment", photo, checkpoint, *PROMPTS, "-t", "0.55")
    assert {(record["status"], record["reason"]) for record in records} == {("ok", "settings changed (threshold)")}
    assert combined.read_bytes() != before


def test_batch_writes_one_per_image_and_new_prompts_redo_it(photo: Path, checkpoint: Path) -> None:
    save(probe_image(1).resize(SIZE), photo.parent / "other.png")
    out = photo.parent.parent / "out"
    args = [arg for prompt in PROMPTS[:2] for arg in ("-p", prompt)]
    records, _ = _run("batch", photo.parent, checkpoint, *args, "-o", out)
    assert sorted(path.name for path in out.glob("*.all_prompts.overlay.png")) == [
        "other.all_prompts.overlay.png", "photo.all_prompts.overlay.png"]
    _assert_every_prompt_drawn([record for record in records if record["image"] == str(photo)], PROMPTS[:2])
    first = (out / "photo.all_prompts.overlay.png").read_bytes()

    records, _ = _run("batch", photo.parent, checkpoint, *args, "-o", out)
    assert {record["status"] for record in records} == {"skipped"}

    args += ["-p", PROMPTS[2]]
    records, _ = _run("batch", photo.parent, checkpoint, *args, "-o", out)
    assert {record["status"] for record in records} == {"ok"}
    _assert_every_prompt_drawn([record for record in records if record["image"] == str(photo)], PROMPTS)
    assert (out / "photo.all_prompts.overlay.png").read_bytes() != first


def test_without_the_flag_no_combined_file_and_no_json_field(photo: Path, checkpoint: Path) -> None:
    done = clipseg("segment", photo, *PROMPTS[:2], "--weights", checkpoint, "--precision", "fp32", "--json")
    assert done.code == 0, done.stderr
    assert all("combined_overlay" not in record for record in done.records())
    assert not list(photo.parent.glob("*.all_prompts.*"))
