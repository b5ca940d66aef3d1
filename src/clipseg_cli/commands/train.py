"""``clipseg train MANIFEST --weights BASE -o OUT_DIR``: fine-tune the decoder on your own masks."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from clipseg_cli.commands import options
from clipseg_cli.constants import DEFAULT_MAX_PIXELS, DEFAULT_MODEL, DEFAULT_THRESHOLD

TRAIN = "Training"


def train_command(
    manifest: Annotated[Path, typer.Argument(
        help="JSON Lines (the records `clipseg batch --json` prints) or CSV with image,prompt,mask columns.",
        show_default=False)],
    output_dir: Annotated[Path, typer.Option(
        "--output-dir", "-o", metavar="DIR", show_default=False,
        help="Folder for the trained checkpoint (published layout) and training.json.")],
    weights: options.Weights = DEFAULT_MODEL,
    epochs: Annotated[int, typer.Option("--epochs", min=1, rich_help_panel=TRAIN,
                                        help="Passes over the training records.")] = 10,
    steps: Annotated[int | None, typer.Option("--steps", min=1, rich_help_panel=TRAIN,
                                              help="Optimizer steps in all (instead of --epochs).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, rich_help_panel=TRAIN,
                                            help="Records per optimizer step.")] = 8,
    lr: Annotated[float, typer.Option("--lr", min=0.0, rich_help_panel=TRAIN,
                                      help="Learning rate; it decays along a cosine to a tenth of it.")] = 1e-3,
    val: Annotated[Path | None, typer.Option("--val", rich_help_panel=TRAIN, metavar="MANIFEST",
                                             help="Validation records [default: --val-fraction of the images].")]
    = None,
    val_fraction: Annotated[float, typer.Option("--val-fraction", min=0.0, max=0.9, rich_help_panel=TRAIN,
                                                help="Fraction of the images held out for validation.")] = 0.1,
    seed: Annotated[int, typer.Option("--seed", rich_help_panel=TRAIN,
                                      help="Same seed, same data and options: same weights.")] = 0,
    variants: Annotated[int, typer.Option("--variants", min=1, rich_help_panel=TRAIN,
                                          help="Augmented versions per image: the image and N-1 crops/flips.")] = 2,
    resume: Annotated[bool, typer.Option("--resume", rich_help_panel=TRAIN,
                                         help="Continue the run in OUT_DIR after its last complete epoch.")] = False,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", rich_help_panel=TRAIN,
                                           help="Train without the bad records (each is named) instead of stopping.")]
    = False,
    cache_dir: Annotated[Path | None, typer.Option(
        "--cache-dir", rich_help_panel=TRAIN, metavar="DIR",
        help="Where image activations are cached [default: the activations folder of `clipseg cache`].")] = None,
    cache_size: Annotated[float, typer.Option("--cache-size", min=0.0, rich_help_panel=TRAIN, metavar="GB",
                                              help="Largest size of that cache.")] = 10.0,
    threads: Annotated[int | None, typer.Option(
        "--threads", min=1, rich_help_panel=TRAIN,
        help="CPU threads for training [default: torch's]; 1 is fastest for small decoders on a busy CPU.")] = None,
    threshold: options.Threshold = DEFAULT_THRESHOLD,
    device: options.Device = "auto",
    precision: options.Precision = "auto",
    revision: options.Revision = None,
    offline: options.Offline = False,
    quiet: options.Quiet = False,
    max_pixels: options.MaxPixels = DEFAULT_MAX_PIXELS,
) -> None:
    """Train the decoder on a manifest, both CLIP towers frozen; OUT_DIR is a checkpoint for --weights.

    OUT_DIR holds the best epoch by validation mIoU; when no epoch beat the base model, it holds the base model and
    the command says so (exit 0: the run worked, training.json says "improved": false).
    """
    from clipseg_cli.errors import printable
    from clipseg_cli.training.api import train
    from clipseg_cli.training.trainer import TrainOptions

    def log(message: str) -> None:
        if not quiet or message.startswith(str(manifest)) or (val and message.startswith(str(val))):
            print(printable(message), file=sys.stderr)

    train_options = TrainOptions(epochs=epochs, steps=steps, batch_size=batch_size, lr=lr, seed=seed, variants=variants,
                                 threshold=threshold)
    try:
        record = train(manifest, weights=weights, out_dir=output_dir, options=train_options, val=val,
                       val_fraction=val_fraction, resume=resume, skip_bad=skip_bad, device=device, precision=precision,
                       revision=revision, offline=offline or None, cache_dir=cache_dir,
                       cache_bytes=int(cache_size * 2**30), threads=threads, max_pixels=max_pixels, log=log,
                       progress=not quiet and sys.stderr.isatty())
    except KeyboardInterrupt:
        if (output_dir / "resume.pt").is_file():
            print(printable(f"clipseg: {output_dir} holds the checkpoint of the last complete epoch; "
                            "continue with --resume"), file=sys.stderr)
        raise
    if record.get("improved") is False and len(record["epochs"]) > 1:  # said even with -q: the run did not help
        base = record["epochs"][0]["val"]["miou"]
        best = max(epoch["val"]["miou"] for epoch in record["epochs"][1:])
        print(printable(f"clipseg: training did not help: no epoch beat the base model's validation mIoU ({base:.4f}; "
                        f"the best epoch's {best:.4f}), so {output_dir} holds the base model unchanged; try another "
                        "--lr, more --epochs or more records"), file=sys.stderr)
        return
    log(f"clipseg: trained checkpoint in {output_dir} (load it with --weights {output_dir})")
