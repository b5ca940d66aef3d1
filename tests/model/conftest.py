"""Fixtures of the model tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from factory import probe_image


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    """photo.png: the probe image the model tests segment."""
    path = tmp_path / "photo.png"
    probe_image(0).save(path)
    return path
