"""Make the docs' pictures: ``python docs/make_pictures.py`` (needs the plot extra for the eval plot).

- docs/images/overlay.png: `combined_overlay` (every prompt in its colour, outlined, with a legend) on
  examples/coffee.jpg. Its masks are drawn by hand here (two ellipses and a box), not predicted, so
  that the picture shows the drawing alone and needs no weights.
- docs/images/eval.png: `plot_curves`, what ``clipseg eval --plot`` writes, on made-up counts: each
  prompt's probability maps are its truth plus Gaussian noise, so the curves have the shapes real
  ones have. Run ``clipseg eval records.jsonl --plot curves.png`` for your own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from clipseg_cli.imaging.writing import combined_overlay, save_png
from clipseg_cli.training.metrics import Scores
from clipseg_cli.training.plot import plot_curves

ROOT = Path(__file__).resolve().parent.parent


def ellipse(size: tuple[int, int], center: tuple[float, float], radii: tuple[float, float]) -> np.ndarray:
    """Returns: an HxW bool ellipse for an image of (width, height)."""
    ys, xs = np.mgrid[: size[1], : size[0]]
    return ((xs - center[0]) / radii[0]) ** 2 + ((ys - center[1]) / radii[1]) ** 2 <= 1


def overlay_picture() -> None:
    image = Image.open(ROOT / "examples" / "coffee.jpg").convert("RGB")
    size = image.size
    saucer = ellipse(size, (300, 200), (260, 150))
    cup = ellipse(size, (290, 165), (150, 110))
    spoon = np.zeros((size[1], size[0]), bool)
    spoon[250:290, 330:560] = True
    save_png(combined_overlay(image, [saucer & ~cup, cup, spoon], ["saucer", "coffee cup", "spoon"]),
             ROOT / "docs" / "images" / "overlay.png", compress_level=9)


def eval_picture() -> None:
    rng = np.random.default_rng(0)
    scores = Scores(threshold=0.4)
    for prompt, noise in (("coffee cup", 0.25), ("spoon", 0.4), ("cat", 0.3)):
        for _ in range(5):
            truth = ellipse((64, 48), tuple(rng.uniform(16, 40, 2)), tuple(rng.uniform(6, 16, 2)))
            prob = np.clip(truth * 0.7 + 0.15 + rng.normal(0, noise, truth.shape), 0, 1).astype(np.float32)
            scores.add(prompt, prob, prob >= 0.4, truth)
    plot_curves(scores, ROOT / "docs" / "images" / "eval.png")


if __name__ == "__main__":
    overlay_picture()
    eval_picture()
