"""``clipseg video`` (masks only) against ``clipseg batch`` on the same frames saved as PNGs, whole processes.

    python benchmarks/video_bench.py            # full-size random rd64-refined (built once, ~600 MB), 48 frames
    python benchmarks/video_bench.py --quick    # the tiny checkpoint: the pipeline's own cost, a minute

Prints, under the CPU's name: frames per second of both and their ratio (goal: video >= 0.9x batch),
what overlays and ProRes cut-outs cost on top, the int8/bf16 ``--precision fast`` figure, the flicker
of a still noisy clip with and without ``--smooth 0.8``, and the peak RSS of a 10 s and a 60 s clip
(goal: at most 1.1x; with the tiny checkpoint). Each figure is one run: on a shared machine, read them as such.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests" / "video")]

from bench import build_checkpoint, cpu_info  # noqa: E402  (the same random checkpoints as bench.py)
from video_clips import decoded_frames, make_clip  # noqa: E402

# Runs clipseg in this process and prints its peak RSS (VmHWM starts afresh at exec, unlike ru_maxrss).
_RUNNER = ("import sys, atexit\n"
           "def peak():\n"
           "    status = open('/proc/self/status').read()\n"
           "    print('peak-rss-kb', status.split('VmHWM:')[1].split()[0], file=sys.stderr)\n"
           "atexit.register(peak)\n"
           "from clipseg_cli.cli import main\n"
           "sys.argv = ['clipseg', *sys.argv[1:]]\n"
           "main()\n")


CPU_SECONDS: dict[str, float] = {}  # CPU time (user + system) of the last run of each command


def clipseg(*args: object) -> tuple[float, int]:
    """Run ``clipseg ARGS`` as a whole process. Returns: (wall seconds, peak RSS in bytes); its CPU time in
    `CPU_SECONDS` (less moved than the wall time by other work on a shared machine)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(HERE.parent / "src")}
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", _RUNNER, *map(str, args)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"clipseg {' '.join(map(str, args))} failed:\n{stderr}")
    CPU_SECONDS[str(args[0])] = usage.ru_utime + usage.ru_stime
    peak = int(stderr.rsplit("peak-rss-kb", 1)[1].split()[0]) * 1024
    return seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny checkpoint (the pipeline's own cost)")
    parser.add_argument("--frames", type=int, default=48, help="frames of the timed clip (24 fps)")
    parser.add_argument("--size", default="640x360", help="the timed clip's WIDTHxHEIGHT")
    args = parser.parse_args()
    name, _ = cpu_info()
    print(f"CPU: {name}, {os.cpu_count()} logical cores")
    cache = HERE / ".cache" / ("quick-rd64-refined" if args.quick else "full-rd64-refined")
    weights = ["--weights", build_checkpoint(cache, tiny=args.quick)]
    width, height = map(int, args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="clipseg-video-bench-") as folder:
        work = Path(folder)
        os.environ["CLIPSEG_CACHE"] = str(work / "cache")
        clip = make_clip(work / "clip.mp4", size=(width, height), frames=args.frames, rate=Fraction(24))
        pngs = work / "frames"
        pngs.mkdir()
        from PIL import Image

        for index, frame in enumerate(decoded_frames(clip)):  # the frames the video run sees, as PNG files
            Image.fromarray(frame).save(pngs / f"{index:05d}.png", compress_level=1)
        for precision in ("auto", "fast"):  # each precision's graphs exported once, before the timed runs
            clipseg("segment", pngs / "00000.png", "car", "-o", work / "warm", *weights, "-q", "-f", "--precision",
                    precision)
        common = ["-p", "car", "--no-overlay", "-q", *weights]
        batch_s, batch_rss = clipseg("batch", pngs, "-o", work / "batch", *common)
        batch_cpu = CPU_SECONDS["batch"]
        video_s, video_rss = clipseg("video", clip, "-o", work / "video", *common)
        video_cpu = CPU_SECONDS["video"]
        full_s, _ = clipseg("video", clip, "-o", work / "full", "-p", "car", "--cutout", "-q", *weights)
        fast_s, _ = clipseg("video", clip, "-o", work / "fast", *common, "--precision", "fast")
        n = args.frames
        print(f"{n} frames {width}x{height}, 1 prompt, {'tiny' if args.quick else 'full-size'} checkpoint, "
              "whole processes (imports and model load included)")
        print(f"  clipseg batch (PNG frames, masks):   {n / batch_s:6.2f} frames/s  ({batch_s:.1f} s, "
              f"peak RSS {batch_rss / 1e6:.0f} MB)")
        print(f"  clipseg video (masks, FFV1):         {n / video_s:6.2f} frames/s  ({video_s:.1f} s, "
              f"peak RSS {video_rss / 1e6:.0f} MB)")
        ratio = batch_s / video_s
        verdict = "PASS" if ratio >= 0.9 else "FAIL"
        print(f"  video / batch frames per second:     {ratio:6.2f}x  (goal >= 0.9x: {verdict})")
        print(f"  CPU time: batch {batch_cpu:.1f} s, video {video_cpu:.1f} s: video / batch frames per CPU second "
              f"{batch_cpu / video_cpu:.2f}x")
        print(f"  + overlay (H.264) and cut-out (ProRes 4444): {full_s - video_s:+.1f} s, {n / full_s:.2f} frames/s")
        print(f"  --precision fast (masks):            {n / fast_s:6.2f} frames/s  ({fast_s:.1f} s)")
        flicker_figures(work, weights, width, height)
        memory(work, ["--weights", build_checkpoint(HERE / ".cache" / "quick-rd64-refined", tiny=True)])


def flicker_figures(work: Path, weights: list, width: int, height: int) -> None:
    """Flicker of a still picture with sensor noise (sigma 12 grey levels), with and without --smooth 0.8."""
    from clipseg_cli.video.smoothing import flicker

    clip = make_clip(work / "still.mkv", size=(width // 2, height // 2), frames=24, still=True, noise=12,
                     codec="ffv1", audio=False)
    figures = []
    for smooth in ("0", "0.8"):
        clipseg("video", clip, "-o", work / f"still-{smooth}", "-p", "car", "--no-overlay", "-q", "--smooth", smooth,
                *weights)
        masks = decoded_frames(work / f"still-{smooth}" / "still.car.mask.mkv", "gray")
        figures.append(flicker([mask > 0 for mask in masks]))
    cut = figures[0] / figures[1] if figures[1] else float("inf")
    print(f"  flicker, still picture + noise: {figures[0]:.4f} -> {figures[1]:.4f} with --smooth 0.8 ({cut:.1f}x less)")


def memory(work: Path, weights: list) -> None:
    """Peak RSS of clipseg video (masks) on a 10 s and a 60 s clip of the same size (320x180, 24 fps), with the
    tiny checkpoint (the model's memory does not depend on the length: what could grow is the pipeline's)."""
    warm = make_clip(work / "warm.mp4", size=(320, 180), frames=4, rate=Fraction(24))
    clipseg("video", warm, "-o", work / "warm-video", "-p", "car", "-q", *weights)  # its graphs exported first
    peaks = {}
    for seconds in (10, 60):
        clip = make_clip(work / f"long{seconds}.mp4", size=(320, 180), frames=24 * seconds, rate=Fraction(24))
        peaks[seconds] = clipseg("video", clip, "-o", work / f"long{seconds}", "-p", "car", "--no-overlay", "-q",
                                 *weights)[1]
    ratio = peaks[60] / peaks[10]
    print(f"  peak RSS, 10 s clip {peaks[10] / 1e6:.0f} MB, 60 s clip {peaks[60] / 1e6:.0f} MB: {ratio:.2f}x "
          f"(goal <= 1.1x: {'PASS' if ratio <= 1.1 else 'FAIL'})")


if __name__ == "__main__":
    main()
