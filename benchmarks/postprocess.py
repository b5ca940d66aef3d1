"""Time the mask steps on one full-size map: blur, dilate + erode, min-area, and all of them (`mask_and_map`).

    python benchmarks/postprocess.py                  # 4000x3000, --blur 8 --dilate 5 --erode 5 --min-area 500
    python benchmarks/postprocess.py --quick          # 800x600, one round
    PYTHONPATH=old/src python benchmarks/postprocess.py   # the same for another version of clipseg_cli

The map is a smooth random field (CLIPSeg's maps are upsampled from 352x352): blobs of every size,
so min-area has components to drop. Prints the best of --rounds for each step: wall seconds, and
the CPU seconds of one thread with every library held to one thread (``--one-thread``; the engine
runs two writer threads side by side, and CPU time holds up on a machine that others load).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable

import numpy as np
from PIL import Image

from clipseg_cli.postprocess import PostProcess, dilate, erode, gaussian_blur, mask_and_map, remove_small_components


def smooth_map(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Returns: HxW float32 in [0, 1], random values on a 1/16 grid upsampled bilinearly."""
    coarse = np.random.default_rng(seed).random((max(2, height // 16), max(2, width // 16))).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize((width, height), Image.BILINEAR))


def best(step: Callable[[], object], rounds: int, clock: Callable[[], float] = time.perf_counter) -> float:
    """Returns: the fastest of ``rounds`` runs of ``step`` by ``clock``, in seconds."""
    times = []
    for _ in range(rounds):
        start = clock()
        step()
        times.append(clock() - start)
    return min(times)


def one_thread() -> None:
    """Hold OpenCV and torch (whichever this version of clipseg_cli uses) to the calling thread."""
    for module, call in (("cv2", "setNumThreads"), ("torch", "set_num_threads")):
        with contextlib.suppress(ImportError):
            getattr(__import__(module), call)(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="4000x3000", help="WIDTHxHEIGHT of the map")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="800x600, one round (a smoke test)")
    parser.add_argument("--one-thread", action="store_true", help="one thread, timed by its CPU time")
    args = parser.parse_args()
    clock = time.perf_counter
    if args.one_thread:
        one_thread()
        clock = time.thread_time
    width, height = (800, 600) if args.quick else map(int, args.size.split("x"))
    rounds = 1 if args.quick else args.rounds
    post = PostProcess(threshold=0.5, blur=8, dilate=5, erode=5, min_area=500)
    prob = smooth_map(width, height)
    mask = gaussian_blur(prob, post.blur) >= post.threshold
    closed = erode(dilate(mask, post.dilate), post.erode)
    steps = {
        f"blur sigma {post.blur:g}": lambda: gaussian_blur(prob, post.blur),
        f"dilate {post.dilate} + erode {post.erode}": lambda: erode(dilate(mask, post.dilate), post.erode),
        f"min-area {post.min_area}": lambda: remove_small_components(closed, post.min_area),
        "all (mask_and_map)": lambda: mask_and_map(prob, post),
    }
    print(f"{width}x{height} map, best of {rounds}, {'CPU time of one thread' if args.one_thread else 'wall time'}")
    for name, step in steps.items():
        print(f"  {name:<22} {best(step, rounds, clock):7.3f} s")


if __name__ == "__main__":
    main()
