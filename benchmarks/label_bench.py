"""Benchmark ``clipseg label --format coco`` against ``clipseg batch --no-overlay``: the same images, prompts and
model, each a whole process, in alternating rounds (issue 32: label at least 0.95x batch's images per second); then
label's peak RSS at two dataset sizes of small images (at most 1.2x from 1,000 to 20,000: the records and the
final files are streamed, never the dataset in memory).

    python benchmarks/label_bench.py                    # 24 JPEGs (640x480 .. 1280x960) x 3 prompts, full-size model
    python benchmarks/label_bench.py --quick            # tiny model, small images: a smoke test
    python benchmarks/label_bench.py --rss 1000,20000   # peak RSS of label (the tests' tiny model) at each size

Each process reports its own peak RSS (VmHWM) as it exits.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench import build_checkpoint, cpu_busy, make_images  # noqa: E402

SIZES = [(640, 480), (1280, 960)]
QUICK_SIZES = [(160, 120), (120, 160)]
PROMPTS = ["a red car", "a tree", "a dog"]
GOAL_SPEED, GOAL_RSS = 0.95, 1.2
# Runs the command line, then prints this process's peak RSS in kB on stderr's last line.
CHILD = ("import atexit, sys\n"
         "def peak():\n"
         "    with open('/proc/self/status') as status:\n"
         "        found = [line.split()[1] for line in status if line.startswith('VmHWM:')]\n"
         "    print('peak-rss-kb', found[0], file=sys.stderr)\n"
         "atexit.register(peak)\n"
         "from clipseg_cli.cli import main\n"
         "main(sys.argv[1:])\n")


def clipseg(args: list[str]) -> tuple[float, int]:
    """Run ``clipseg ARGS`` in a process of its own.

    Returns:
        (seconds, peak RSS in bytes).
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, *args], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"clipseg {args[0]} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    line = next(line for line in reversed(done.stderr.splitlines()) if line.startswith("peak-rss-kb"))
    return seconds, int(line.split()[1]) * 1024


def speed(args: argparse.Namespace, work: Path) -> bool:
    """label --format coco against batch --no-overlay; returns whether the goal holds."""
    images = work / "images"
    make_images(images, args.images, QUICK_SIZES if args.quick else SIZES)
    model = ["-q", "--weights", str(args.cache), "--precision", args.precision]
    prompts = [item for prompt in PROMPTS for item in ("-p", prompt)]
    clipseg(["batch", str(images / "img000_640x480.jpg" if not args.quick else images), "-o", str(work / "warm"),
             *model, *prompts])  # exported graphs cached, as for a user's second run
    busy = cpu_busy()
    if busy > 0.1:
        print(f"warning: other processes kept {busy:.0%} of the CPU busy; timings are indicative only")
    rounds: dict[str, list[tuple[float, int]]] = {"batch": [], "label": []}
    for number in range(args.rounds):  # alternating, each into a new folder: a busy machine hits both alike
        rounds["batch"].append(clipseg(["batch", str(images), "-o", str(work / f"batch{number}"), "--no-overlay",
                                        *model, *prompts]))
        rounds["label"].append(clipseg(["label", str(images), "-o", str(work / f"label{number}"), "--format",
                                        "coco", *model, *prompts]))
    (batch_s, batch_rss), (label_s, label_rss) = min(rounds["batch"]), min(rounds["label"])
    ratio = batch_s / label_s
    shown = {side: " ".join(f"{seconds:.1f}" for seconds, _ in found) for side, found in rounds.items()}
    print(f"{args.images} JPEGs x {len(PROMPTS)} prompts, {args.precision}, {os.cpu_count()} CPUs, best of "
          f"{args.rounds} alternating rounds (batch {shown['batch']} s; label {shown['label']} s)"
          + (" (--quick: tiny model, indicative only)" if args.quick else ""))
    print(f"  batch --no-overlay  {batch_s:7.1f} s  {args.images / batch_s:6.2f} img/s  peak RSS {batch_rss >> 20} MB")
    print(f"  label --format coco {label_s:7.1f} s  {args.images / label_s:6.2f} img/s  peak RSS {label_rss >> 20} MB")
    verdict = ratio >= GOAL_SPEED
    print(f"  label / batch images per second: {ratio:.3f} (goal >= {GOAL_SPEED}) {'PASS' if verdict else 'FAIL'}")
    return verdict


def memory(args: argparse.Namespace, work: Path) -> bool:
    """label's peak RSS at each dataset size (the tests' tiny model, 64x64 input; 32x32 PNGs); returns whether
    the goal holds."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    from factory import build_checkpoint as build_tiny

    tiny = HERE / ".cache" / "tests-complex"
    if not (tiny / "config.json").is_file():
        build_tiny(tiny, "complex")
    counts = [int(count) for count in args.rss.split(",")]
    rng = np.random.default_rng(0)
    folder = work / "small"
    folder.mkdir()
    made, peaks = 0, []
    for count in counts:
        for index in range(made, count):  # the larger set holds the smaller one, 1,000 images a folder
            part = folder / f"{index // 1000:03d}"
            part.mkdir(exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(part / f"{index:06d}.png")
        made = count
        subset = [str(folder / f"{part:03d}") for part in range(-(-count // 1000))]
        seconds, peak = clipseg(["label", *subset, "-o", str(work / f"ds{count}"), "--format", "coco", "-q",
                                 "--weights", str(tiny), "--precision", "fp32", "-p", "car", "-p", "tree"])
        peaks.append(peak)
        print(f"  label {count:6d} images: {seconds:7.1f} s, peak RSS {peak / 2**20:7.1f} MB")
        shutil.rmtree(work / f"ds{count}")
    ratio = peaks[-1] / peaks[0]
    verdict = ratio <= GOAL_RSS
    print(f"  peak RSS {counts[-1]} / {counts[0]} images: {ratio:.3f} (goal <= {GOAL_RSS}) "
          f"{'PASS' if verdict else 'FAIL'}")
    return verdict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model and small images: a smoke test")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of each side; the best counts")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fast"))
    parser.add_argument("--rss", metavar="N,M", help="measure label's peak RSS at these dataset sizes instead")
    parser.add_argument("--cache", type=Path, help="checkpoint folder (default: benchmarks/.cache/...)")
    args = parser.parse_args(argv)
    args.cache = args.cache or HERE / ".cache" / ("quick-rd64-refined" if args.quick else "full-rd64-refined")
    work = Path(tempfile.mkdtemp(prefix="clipseg-label-bench-"))
    try:
        if args.rss:
            return 0 if memory(args, work) else 1
        build_checkpoint(args.cache, tiny=args.quick)
        return 0 if speed(args, work) or args.quick else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
