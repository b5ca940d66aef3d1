"""``clipseg eval --plot``, and the docs' claim that --blur/--invert/--refine move AP and the best threshold."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import clipseg


def _manifest(folder: Path) -> Path:
    """Two images, two prompts, masks of a block each."""
    rng = np.random.default_rng(5)
    lines = []
    for name, size in (("a.png", (48, 36)), ("b.png", (40, 40))):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / name)
        for prompt, rows in (("red car", slice(size[1] // 4, size[1] // 2)), ("tree", slice(size[1] // 2, None))):
            mask = np.zeros((size[1], size[0]), np.uint8)
            mask[rows, : size[0] // 2] = 255
            mask_name = f"{name}.{prompt.replace(' ', '-')}.mask.png"
            Image.fromarray(mask).save(folder / mask_name)
            lines.append({"image": name, "prompt": prompt, "mask": mask_name})
    manifest = folder / "m.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return manifest


def _eval(manifest: Path, checkpoint: Path, *args: object) -> dict:
    done = clipseg("eval", manifest, "--weights", checkpoint, "--precision", "fp32", "--json", "-q", *args)
    assert done.code == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.slow
def test_plot_writes_the_curves_as_a_png(tmp_path: Path, checkpoint: Path) -> None:
    pytest.importorskip("matplotlib")
    summary = _eval(_manifest(tmp_path), checkpoint, "--plot", tmp_path / "curves.png")
    assert summary["records"] == 4 and summary["prompts"] == 2
    with Image.open(tmp_path / "curves.png") as image:
        assert image.format == "PNG" and image.size == (1000, 420)
        pixels = np.asarray(image.convert("RGB"))
    for color in ((230, 159, 0), (86, 180, 233)):  # one line per prompt, in the palette's colours
        assert (np.abs(pixels.astype(int) - color).sum(axis=2) < 30).sum() > 50
    assert [p.name for p in tmp_path.iterdir() if "clipseg-tmp" in p.name] == []


def test_plot_without_matplotlib_is_a_one_line_error_before_any_work(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    done = clipseg("eval", _manifest(tmp_path), "--weights", tmp_path / "no-such-weights", "--plot", tmp_path / "c.png")
    assert done.code == 2
    assert done.errors() == ["error: --plot needs matplotlib: pip install 'clipseg-cli[plot]'"]
    assert not (tmp_path / "c.png").exists()


@pytest.mark.slow
@pytest.mark.parametrize("change", [("--blur", "3"), ("--invert",), ("--refine", "guided")])
def test_map_steps_change_ap_and_the_curve(tmp_path: Path, checkpoint: Path, change: tuple[str, ...]) -> None:
    manifest = _manifest(tmp_path)
    plain, changed = _eval(manifest, checkpoint), _eval(manifest, checkpoint, *change)
    assert changed["ap"] != pytest.approx(plain["ap"], abs=1e-4)
    assert changed["best_miou"] != pytest.approx(plain["best_miou"], abs=1e-4)


def test_plot_into_a_missing_folder_is_a_one_line_error_before_any_work(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    done = clipseg("eval", _manifest(tmp_path), "--weights", tmp_path / "no-such-weights", "--plot",
                   tmp_path / "nowhere" / "c.png")
    assert done.code == 2 and len(done.errors()) == 1 and "nowhere" in done.errors()[0]


@pytest.mark.parametrize(("truth_prob", "background_prob"), [(0.99, 0.9), (0.9, 0.0), (0.6, 0.3), (0.3, 0.6)],
                         ids=["best-high-right", "best-high-left", "middle", "worst"])
def test_the_best_threshold_label_stays_inside_its_axes_and_off_the_title(truth_prob: float,
                                                                            background_prob: float) -> None:
    pytest.importorskip("matplotlib")
    from clipseg_cli.training.metrics import Scores
    from clipseg_cli.training.plot import curves_figure

    truth = np.zeros((40, 40), bool)
    truth[:, :20] = True
    prob = np.where(truth, truth_prob, background_prob).astype(np.float32)
    scores = Scores(threshold=0.4)
    scores.add("car", prob, prob >= 0.4, truth)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = curves_figure(scores)
    canvas = FigureCanvasAgg(figure)  # the canvas savefig draws on
    canvas.draw()  # the constrained layout and the text sizes, as the PNG has them
    renderer = canvas.get_renderer()
    iou_axes = figure.axes[1]
    [label] = [text for text in iou_axes.texts if text.get_text().startswith("best ")]
    box = label.get_window_extent(renderer)
    assert not box.overlaps(iou_axes.title.get_window_extent(renderer))
    inside = iou_axes.get_window_extent(renderer)
    assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1, (box, inside)
