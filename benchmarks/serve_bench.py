"""Benchmark ``clipseg serve`` against ``clipseg batch`` on the same images and prompt, in the same run.

A server on 127.0.0.1 answers a bounded number of requests at 1, 4 and 16 concurrent clients
(throughput, p50/p95/p99 latency); then ``clipseg batch`` segments the same images once. The
checkpoint is bench.py's random rd64-refined (full size; ``--quick``: narrow towers), built offline.

    python benchmarks/serve_bench.py                     # 32 images 640x480, 48 requests per level
    python benchmarks/serve_bench.py --quick             # smoke: narrow towers, 8 images, 16 requests
    python benchmarks/serve_bench.py --ray-replicas 2    # the server as 2 Ray Serve replicas (clipseg serve --ray)
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench import build_checkpoint, make_images  # noqa: E402

SRC = HERE.parent / "src"
PROMPT = "a red car"
LEVELS = (1, 4, 16)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def start_server(checkpoint: Path, precision: str, batch_size: int, ray_replicas: int) -> tuple[subprocess.Popen, str]:
    """Start ``clipseg serve`` (with ``ray_replicas``, ``--ray``: the machine's CPUs shared among them)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1"}
    on_ray = (["--ray", "--replicas", str(ray_replicas), "--replica-cpus", str((os.cpu_count() or 1) / ray_replicas)]
              if ray_replicas else [])
    process = subprocess.Popen([sys.executable, "-m", "clipseg_cli", "serve", "--weights", str(checkpoint),
                                "--precision", precision, "--port", str(port), "--batch-size", str(batch_size),
                                "--max-queue", "256", *on_ray], env=env)
    url, end = f"http://127.0.0.1:{port}", time.monotonic() + 600
    while time.monotonic() < end and process.poll() is None:
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the server did not start")


def run_level(url: str, images: list[Path], clients: int, requests: int) -> dict:
    payloads = [path.read_bytes() for path in images]
    with httpx.Client(timeout=600, limits=httpx.Limits(max_connections=clients)) as client:

        def one(index: int) -> float:
            start = time.perf_counter()
            answer = client.post(f"{url}/v1/segment", data={"prompt": PROMPT},
                                 files={"image": ("i.jpg", payloads[index % len(payloads)])})
            answer.raise_for_status()
            return time.perf_counter() - start

        one(0)  # warm: the prompt embedded, the graph ready
        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            latencies = list(pool.map(one, range(requests)))
        wall = time.perf_counter() - start
    return {"clients": clients, "images/s": requests / wall, "p50": percentile(latencies, 50),
            "p95": percentile(latencies, 95), "p99": percentile(latencies, 99)}


def run_batch(checkpoint: Path, folder: Path, precision: str, batch_size: int) -> float:
    """Returns: images per second of the engine ``clipseg batch`` runs (in this process, the model load not timed)."""
    sys.path.insert(0, str(SRC))
    from clipseg_cli.predictor import Segmenter
    from clipseg_cli.run.engine import Pipeline
    from clipseg_cli.run.job import Job
    from clipseg_cli.run.outputs import OutputPlan

    segmenter = Segmenter.from_pretrained(str(checkpoint), precision=precision, progress=False)
    job = Job([PROMPT], plan=OutputPlan(overlay=False), force=True, pipeline=Pipeline(batch_size=batch_size))
    images = sorted(folder.iterdir())
    with tempfile.TemporaryDirectory() as out:
        list(job.segment(segmenter, images[:1], output_dir=out))  # warm, as the server's first request
        start = time.perf_counter()
        results = list(job.segment(segmenter, images, output_dir=out))
        seconds = time.perf_counter() - start
    assert all(result.status == "ok" for result in results)
    return len(images) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--requests", type=int, default=48, help="requests per concurrency level")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--ray-replicas", type=int, default=0, help="serve with --ray and this many replicas")
    args = parser.parse_args()
    if args.quick:
        args.images, args.requests = 8, 16
    work = Path(tempfile.gettempdir()) / "clipseg-serve-bench"
    checkpoint = build_checkpoint(work / ("tiny" if args.quick else "full"), tiny=args.quick)
    folder = work / f"images-{args.images}"
    if not folder.is_dir():
        make_images(folder, args.images, [(640, 480)])
    images = sorted(folder.iterdir())
    process, url = start_server(checkpoint, args.precision, args.batch_size, args.ray_replicas)
    try:
        rows = [run_level(url, images, clients, args.requests) for clients in LEVELS]
    finally:
        process.terminate()
        process.wait(timeout=120)
    batch = run_batch(checkpoint, folder, args.precision, args.batch_size)
    print("\n| clients | images/s | vs batch | p50 ms | p95 ms | p99 ms |\n|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['clients']} | {row['images/s']:.2f} | {row['images/s'] / batch:.2f}x | {row['p50'] * 1e3:.0f} "
              f"| {row['p95'] * 1e3:.0f} | {row['p99'] * 1e3:.0f} |")
    print(f"| clipseg batch | {batch:.2f} | 1.00x | | | |")


if __name__ == "__main__":
    main()
