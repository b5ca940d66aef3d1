"""How well and how fast --refine recovers true object edges from CLIPSeg-like maps (offline, no weights).

Composites of objects with a known alpha cut from real photos and pasted on other photos
(`refine_composites`: scikit-image's bundled photos, `pip install -r benchmarks/requirements.txt`),
and coarse maps made as CLIPSeg makes them (22 x 22 patch averages, upsampled, a little noise,
upsampled to the photo's size). Per method: mean IoU and
boundary F-score (2 px tolerance) of the mask at the CLI's default threshold against the true mask
(alpha >= 0.5), and seconds per megapixel (one process, after one warm-up call per method).

    python benchmarks/refine_bench.py            # 24 composites, 640x480 .. 4000x3000
    python benchmarks/refine_bench.py --quick    # 4 small composites: a smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from refine_composites import make_composite

from clipseg_cli.constants import DEFAULT_THRESHOLD
from clipseg_cli.refine import refine_map

SIZES = [(640, 480), (1024, 768), (1600, 1200), (1920, 1080), (800, 800), (4000, 3000)]
GOALS = "goals: guided raises boundary F by >= 0.25 with IoU no lower (<= 0.15 s/MP); " \
        "matting boundary F >= 0.9 and IoU >= 0.97 (<= 1.5 s/MP)"


def boundary(mask: np.ndarray) -> np.ndarray:
    """Returns: HxW bool, the mask's pixels that touch the background (8-neighbourhood)."""
    m = mask.astype(np.uint8)
    return (m - cv2.erode(m, np.ones((3, 3), np.uint8), borderValue=0)) > 0


def boundary_f(found: np.ndarray, truth: np.ndarray, tolerance: float = 2.0) -> float:
    """Boundary F-score: precision and recall of edge pixels matched within ``tolerance`` pixels."""
    a, b = boundary(found), boundary(truth)
    if not a.any() or not b.any():
        return float(a.any() == b.any())
    precision = (cv2.distanceTransform((~b).view(np.uint8), cv2.DIST_L2, 5)[a] <= tolerance).mean()
    recall = (cv2.distanceTransform((~a).view(np.uint8), cv2.DIST_L2, 5)[b] <= tolerance).mean()
    return float(2 * precision * recall / max(precision + recall, 1e-12))


def iou(found: np.ndarray, truth: np.ndarray) -> float:
    return float((found & truth).sum() / max(1, (found | truth).sum()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 small composites")
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--methods", default="none,guided,matting")
    args = parser.parse_args()
    count, sizes = (4, SIZES[:2]) if args.quick else (args.count, SIZES)
    methods = args.methods.split(",")
    scores = {method: [] for method in methods}
    seconds = dict.fromkeys(methods, 0.0)
    ceiling = []  # the true alpha itself, cut at the same threshold: what a perfect matte would score
    megapixels = 0.0
    warm = make_composite(999, 320, 240)
    for method in methods:  # imports, numba's cached code: not part of the per-image cost
        refine_map(warm.image, warm.coarse, method)
    for seed in range(count):
        composite = make_composite(seed, *sizes[seed % len(sizes)])
        megapixels += composite.alpha.size / 1e6
        exact = composite.alpha >= DEFAULT_THRESHOLD
        ceiling.append((iou(exact, composite.mask), boundary_f(exact, composite.mask)))
        for method in methods:
            start = time.perf_counter()
            refined = refine_map(composite.image, composite.coarse, method)
            seconds[method] += time.perf_counter() - start
            found = refined >= DEFAULT_THRESHOLD
            scores[method].append((iou(found, composite.mask), boundary_f(found, composite.mask)))
    print(f"{count} composites, {megapixels:.1f} MP; threshold {DEFAULT_THRESHOLD}; {GOALS}")
    print(f"{'method':<10} {'IoU':>7} {'boundary F':>11} {'s/MP':>7}")
    for method in methods:
        mean_iou, mean_f = np.mean(scores[method], axis=0)
        print(f"{method:<10} {mean_iou:>7.4f} {mean_f:>11.4f} {seconds[method] / megapixels:>7.3f}")
    mean_iou, mean_f = np.mean(ceiling, axis=0)
    print(f"{'true alpha':<10} {mean_iou:>7.4f} {mean_f:>11.4f} {'-':>7}  (a perfect matte: the ceiling)")


if __name__ == "__main__":
    main()
