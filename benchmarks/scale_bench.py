"""Benchmark scale-out on one machine: the same folder plain, as 2 shards in parallel, and with --ray.

On 2 cores no speed-up is expected, only the overhead: Ray's run must stay under 1.15x the plain
run's time, plus Ray's start-up (``ray start``), which is timed and printed apart. Every mode runs
the real command line in its own process (``python -m clipseg_cli batch``) and must write the same
files, byte for byte.

    python benchmarks/scale_bench.py               # 48 JPEGs (640x480 .. 1920x1080) x 3 prompts, full-size model
    python benchmarks/scale_bench.py --quick       # smoke test: 48 small JPEGs, tiny model
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench import build_checkpoint, cpu_busy, make_images  # noqa: E402

SIZES = [(640, 480), (1280, 960), (1920, 1080)]
QUICK_SIZES = [(160, 120), (120, 160)]
PROMPTS = ["a red car", "a tree", "a dog"]
BUDGET = 0.15  # Ray's overhead over the plain run, start-up aside
RAY = str(Path(sys.executable).with_name("ray"))


def clipseg(args: list[str], threads: int | None = None) -> subprocess.Popen:
    """Start ``clipseg batch ARGS`` in a process of its own; output to this script's stderr only on error."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return subprocess.Popen([sys.executable, "-m", "clipseg_cli", "batch", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        _, errors = process.communicate()
        if process.returncode:
            raise SystemExit(f"clipseg exited {process.returncode}: {errors.strip()}")


def timed(processes: list[subprocess.Popen]) -> float:
    start = time.perf_counter()
    wait(processes)
    return time.perf_counter() - start


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def run(args: argparse.Namespace, work: Path) -> list[tuple[str, float, int]]:
    """Returns: (mode, seconds, images) per mode, Ray's start-up as its own row."""
    images = work / "images"
    make_images(images, args.images, QUICK_SIZES if args.quick else SIZES)
    common = ["-q", "--weights", str(args.cache), "--precision", args.precision, "--no-overlay",
              *(item for prompt in PROMPTS for item in ("-p", prompt))]
    rows = []
    busy = cpu_busy()
    if busy > 0.1:
        print(f"warning: other processes kept {busy:.0%} of the CPU busy; timings are indicative only")
    rows.append(("plain", timed([clipseg([str(images), "-o", str(work / "plain"), *common])]), args.images))
    half = max(1, (os.cpu_count() or 2) // 2)  # a job array gives each task its share of the cores
    shards = [clipseg([str(images), "-o", str(work / "shards"), "--shard", f"{k}/2", *common], threads=half)
              for k in range(2)]
    rows.append(("2 shards in parallel", timed(shards), args.images))
    start = time.perf_counter()
    subprocess.run([RAY, "start", "--head", f"--num-cpus={args.ray_cpus}", "--include-dashboard=false",
                    "--disable-usage-stats"], check=True, capture_output=True)
    rows.append(("ray start-up (ray start)", time.perf_counter() - start, 0))
    try:
        rows.append(("--ray (local, 2 CPUs)", timed([clipseg([str(images), "-o", str(work / "ray"),
                                                              "--ray-address", "auto", *common])]), args.images))
    finally:
        subprocess.run([RAY, "stop", "--force"], check=False, capture_output=True)
    expected = files(work / "plain")
    assert expected and files(work / "shards") == expected and files(work / "ray") == expected, "outputs differ"
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model and small images: a smoke test")
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--ray-cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--cache", type=Path, help="checkpoint folder (default: benchmarks/.cache/...)")
    args = parser.parse_args(argv)
    args.cache = args.cache or HERE / ".cache" / ("quick-rd64-refined" if args.quick else "full-rd64-refined")
    build_checkpoint(args.cache, tiny=args.quick)
    work = Path(tempfile.mkdtemp(prefix="clipseg-scale-"))
    try:
        rows = run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{args.images} JPEGs x {len(PROMPTS)} prompts, {os.cpu_count()} CPUs"
          + (" (--quick: tiny model, indicative only)" if args.quick else ""))
    for mode, seconds, count in rows:
        rate = f"{count / seconds:6.2f} img/s" if count else ""
        print(f"  {mode:<26} {seconds:7.1f} s  {rate}")
    plain, ray = rows[0][1], rows[3][1]
    overhead = ray / plain - 1
    verdict = "PASS" if overhead < BUDGET else "FAIL"
    print(f"  Ray's overhead over plain (start-up aside): {overhead:+.1%} (budget < {BUDGET:.0%}) {verdict}; "
          f"identical outputs in all modes")
    return 0 if args.quick or verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
