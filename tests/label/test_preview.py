"""--preview N: a contact sheet of N labelled images in class colours, with a legend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipseg_cli.imaging.writing import palette_color

pytestmark = pytest.mark.usefixtures("offline")


def test_preview_shows_n_images_in_class_colours_with_a_legend(tmp_path: Path, photos: Path, run_label) -> None:
    assert run_label(photos, tmp_path / "ds", "-p", "car", "-p", "tree", "--preview", "5").code == 0
    with Image.open(tmp_path / "ds" / "preview.png") as opened:
        sheet = np.asarray(opened.convert("RGB"))
    assert sheet.shape == (24 + 2 * 256, 4 * 256, 3)  # 5 tiles: two rows of four
    legend = sheet[:24]
    for index in range(2):  # each class's swatch is in the legend
        assert (legend == palette_color(index)).all(axis=-1).sum() >= 100
    tiles = [sheet[24 + row * 256 : 24 + (row + 1) * 256, col * 256 : (col + 1) * 256]
             for row in range(2) for col in range(4)]
    assert all((tile != 255).any() for tile in tiles[:5]) and not (tiles[5] != 255).any()
    for index in range(2):  # the regions' outlines are drawn in their class's colour
        assert any((tile == palette_color(index)).all(axis=-1).sum() > 20 for tile in tiles[:5])
    assert run_label(photos, tmp_path / "none", "-p", "car").code == 0
    assert not (tmp_path / "none" / "preview.png").exists()
