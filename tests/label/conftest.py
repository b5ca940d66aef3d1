"""Fixtures of the label tests: a folder of small images, and `label` / `batch` runs on the tiny checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import clipseg, noise, save

MASK_OPTIONS = ["--threshold", "0.5", "--blur", "1.5", "--precision", "fp32"]


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Six small noise images (one in a subfolder, two sharing a stem)."""
    folder = tmp_path / "photos"
    for index, name in enumerate(["a.png", "b.jpg", "c.png", "same.png", "same.jpg", "sub/d.png"]):
        save(noise((64 + 8 * index, 48), seed=index), folder / name)
    return folder


@pytest.fixture
def run_label(weights: list[str]):
    def run(inputs, out: Path, *args: object):
        inputs = inputs if isinstance(inputs, list) else [inputs]
        return clipseg("label", *inputs, "-r", "-o", out, *weights, *MASK_OPTIONS, *args)
    return run


@pytest.fixture
def run_batch(weights: list[str]):
    def run(inputs, out: Path, *args: object):
        return clipseg("batch", inputs, "-r", "-o", out, "--no-overlay", *weights, *MASK_OPTIONS, *args)
    return run
