"""What a user changes between runs is noticed: weights replaced in place, odd characters in prompts and
manifests, damaged inputs; and what a run leaves behind is whole (issue 19)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from factory import build_checkpoint, shapes_task, write_manifest
from helpers import clipseg, noise, save

SIZE = (64, 48)


def replace_in_place(target: Path, source: Path) -> None:
    """Overwrite ``target``'s bytes with ``source``'s as ``cp -p`` does: same inode, size and mtime."""
    before = target.stat()
    shutil.copyfile(source, target)  # opens the existing file for writing: the inode stays
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = target.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    assert target.read_bytes() == source.read_bytes()


@pytest.fixture
def swappable(tmp_path: Path) -> tuple[Path, Path]:
    """Two checkpoints of one architecture (same file sizes), different weights: (used, replacement)."""
    used = build_checkpoint(tmp_path / "weights", "plain", seed=3)
    other = build_checkpoint(tmp_path / "other", "plain", seed=4)
    assert (used / "model.safetensors").stat().st_size == (other / "model.safetensors").stat().st_size
    return used, other


@pytest.mark.parametrize("precision", ["fp32", "int8"])  # torch, and ONNX Runtime's cached graphs
def test_weights_replaced_in_place_with_the_same_size_and_mtime_are_noticed(
        swappable: tuple[Path, Path], tmp_path: Path, precision: str) -> None:
    used, other = swappable
    photo = save(noise(SIZE, seed=5), tmp_path / "in" / "photo.png")

    def run(weights: Path, out: str) -> dict:
        outcome = clipseg("segment", photo, "red car", "-o", tmp_path / out, "--weights", weights, "--json",
                          "--precision", precision, "--device", "cpu", "-q")
        assert outcome.code == 0, outcome.stderr
        [record] = outcome.records()
        return record

    run(used, "out")
    assert run(used, "out")["status"] == "skipped"
    replace_in_place(used / "model.safetensors", other / "model.safetensors")
    record = run(used, "out")
    assert (record["status"], record["reason"]) == ("ok", "weights changed")
    fresh = run(other, "fresh")  # the replacement's own masks (for int8: from graphs exported from its bytes)
    for kind in ("mask", "overlay"):
        assert Path(record[kind]).read_bytes() == Path(fresh[kind]).read_bytes()


def test_training_does_not_reuse_the_activations_of_weights_replaced_in_place(
        tmp_path: Path) -> None:
    used = build_checkpoint(tmp_path / "weights", "fine", seed=3)
    other = build_checkpoint(tmp_path / "other", "fine", seed=4)
    manifest = write_manifest(tmp_path / "data" / "train.jsonl", shapes_task(tmp_path / "data", 4))

    def passes(out: str) -> int:
        outcome = clipseg("train", manifest, "--weights", used, "-o", tmp_path / out, "--precision", "fp32",
                          "--device", "cpu", "--cache-dir", tmp_path / "cache", "--epochs", "1", "--threads", "1",
                          "--val-fraction", "0.5", "-q")
        assert outcome.code == 0, outcome.stderr
        return json.loads((tmp_path / out / "training.json").read_text())["epochs"][-1]["image_tower_passes"]

    first = passes("first")
    assert first > 0
    assert passes("again") == 0  # the same weights: every activation comes from the cache
    replace_in_place(used / "model.safetensors", other / "model.safetensors")
    assert passes("replaced") == first
