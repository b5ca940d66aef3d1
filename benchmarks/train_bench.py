"""Training throughput of ``clipseg train`` on the full-size random checkpoint (ViT-B/16, rd64, refined).

Trains a few epochs on a measured subset of records (JPEGs of photo size with a mask each) from a
cold activation cache, and prints records per second for the first epoch (image-tower passes for
every augmentation variant, plus the decoder) and the later ones (the decoder alone, activations
read back from the cache), with the seconds an epoch of 1,000 records takes, extrapolated from
the subset. Validation and checkpoint writes are not counted (training.json's ``seconds``).

    python benchmarks/train_bench.py                       # 100 records, 3 epochs, full-size model
    python benchmarks/train_bench.py --records 40 --precision fp32 --threads 2
    python benchmarks/train_bench.py --quick               # smoke run: tiny model, 8 records
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench import build_checkpoint, make_images  # noqa: E402

PROMPTS = ["a red car", "a tree", "a dog"]
SIZES = [(640, 480), (1280, 960), (1920, 1080)]
QUICK_SIZES = [(320, 240), (240, 320)]


def make_records(folder: Path, count: int, sizes: list[tuple[int, int]]) -> Path:
    """``count`` records on count / len(PROMPTS) images (each image has every prompt), masks of random boxes.

    Returns:
        The manifest path.
    """
    rng = np.random.default_rng(0)
    images = make_images(folder, -(-count // len(PROMPTS)), sizes)
    lines = []
    for path in images:
        width, height = Image.open(path).size
        for prompt in PROMPTS:
            if len(lines) == count:
                break
            mask = np.zeros((height, width), np.uint8)
            x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
            mask[y0 : y0 + height // 3, x0 : x0 + width // 3] = 255
            name = f"{path.stem}.{prompt.replace(' ', '-')}.mask.png"
            Image.fromarray(mask).save(folder / name)
            lines.append(json.dumps({"image": path.name, "prompt": prompt, "mask": name}))
    manifest = folder / "train.jsonl"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100, help="records trained on (the measured subset)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs (the first fills the cache)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--variants", type=int, default=2, help="augmented versions per image")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--checkpoint", type=Path, help="checkpoint folder (default: bench.py's, built if missing)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model, 8 records, 2 epochs")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.update(HF_HUB_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1", TRANSFORMERS_VERBOSITY="error")
    if args.quick:
        args.records, args.epochs = 8, 2
    checkpoint = args.checkpoint or build_checkpoint(
        HERE / ".cache" / ("quick-rd64-refined" if args.quick else "full-rd64-refined"), tiny=args.quick)
    from clipseg_cli.training.api import train
    from clipseg_cli.training.trainer import TrainOptions

    work = Path(tempfile.mkdtemp(prefix="clipseg-train-bench-"))
    try:
        manifest = make_records(work / "data", args.records, QUICK_SIZES if args.quick else SIZES)
        options = TrainOptions(epochs=args.epochs, batch_size=args.batch_size, variants=args.variants)
        log = train(manifest, weights=checkpoint, out_dir=work / "out", options=options, val_fraction=0.0,
                    device=args.device, precision=args.precision, cache_dir=work / "cache", threads=args.threads,
                    log=lambda message: None, progress=False)
    finally:
        if args.keep:
            print(f"data, cache and checkpoint kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    epochs = log["epochs"][1:]
    records = log["data"]["records"]
    print(f"{records} records on {-(-records // len(PROMPTS))} images, batch {args.batch_size}, "
          f"{args.variants} variant(s) per image, precision {log['base']['precision']}"
          + (" (--quick: tiny model, indicative only)" if args.quick else ""))
    for epoch in epochs:
        rate = records / epoch["seconds"]
        print(f"  epoch {epoch['epoch']}: {epoch['seconds']:8.2f} s  {rate:7.2f} records/s  "
              f"-> {1000 / rate:8.1f} s per 1,000 records (extrapolated)  "
              f"image-tower passes so far: {epoch['image_tower_passes']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
