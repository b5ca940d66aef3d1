"""Draw docs/images/refine.png: one composite of `refine_composites` (a hairy horse cut from one bundled photo,
pasted on another), before and after --refine.

Panels: the map as CLIPSeg makes it (outline of the mask at the default threshold, and the true
edge), the same after --refine guided, and the --refine matting cut-out on a chequerboard.

    python benchmarks/refine_picture.py [--output docs/images/refine.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from refine_composites import make_composite

from clipseg_cli.constants import DEFAULT_THRESHOLD
from clipseg_cli.refine.guided import guided_refine
from clipseg_cli.refine.matting import matte

ROOT = Path(__file__).resolve().parent.parent
TRUE_EDGE, FOUND_EDGE = (255, 255, 255), (255, 40, 40)


def outlined(image: np.ndarray, mask: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Returns: a copy of the image with the true edge in white and the mask's edge in red."""
    out = image.copy()
    for m, colour in ((truth, TRUE_EDGE), (mask, FOUND_EDGE)):
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, colour, 2)
    return out


def chequered(image: np.ndarray, alpha: np.ndarray, cell: int = 16) -> np.ndarray:
    """Returns: the image composited with ``alpha`` over a grey chequerboard (HxWx3 uint8)."""
    h, w = alpha.shape
    y, x = np.mgrid[:h, :w]
    board = np.where(((y // cell + x // cell) % 2 == 0)[..., None], 200, 150).astype(np.float32)
    a = alpha[..., None]
    return np.clip(a * image + (1 - a) * board + 0.5, 0, 255).astype(np.uint8)


def label(panel: np.ndarray, text: str) -> np.ndarray:
    cv2.rectangle(panel, (0, 0), (panel.shape[1], 26), (0, 0, 0), -1)
    cv2.putText(panel, text, (8, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
    return panel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "images" / "refine.png")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    composite = make_composite(args.seed, 400, 300, hairy=True, outline="horse")
    image, truth = composite.image, composite.mask
    guided = guided_refine(image, composite.coarse) >= DEFAULT_THRESHOLD
    matted = matte(image, composite.coarse)
    panels = [label(outlined(image, composite.coarse >= DEFAULT_THRESHOLD, truth), "CLIPSeg-like map (none)"),
              label(outlined(image, guided, truth), "--refine guided"),
              label(chequered(matted.foreground.astype(np.float32), matted.alpha), "--refine matting --cutout")]
    picture = Image.fromarray(np.concatenate(panels, axis=1)).quantize(256, dither=Image.Dither.NONE)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    picture.save(args.output, optimize=True)
    print(f"{args.output}: {args.output.stat().st_size // 1024} KB (white: true edge, red: the mask's edge)")


if __name__ == "__main__":
    main()
