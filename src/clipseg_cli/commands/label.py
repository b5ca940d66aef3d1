"""``clipseg label INPUT... -p CLASS -o DATASET --format coco|yolo|voc|labelstudio``: a training dataset."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from clipseg_cli.commands import options
from clipseg_cli.commands.settings import (
    MODEL_AND_MASK_OPTIONS,
    RunOptions,
    check_output_dir,
    job_from_options,
    model_spec,
    with_run_options,
)
from clipseg_cli.errors import ClipSegError, printable

DATASET = "Dataset"
SCALE = "Scale out"


@with_run_options(only=(*MODEL_AND_MASK_OPTIONS, "batch_size"), fixed={"overlay": False})
def label_command(
    inputs: Annotated[list[str], typer.Argument(
        help="Image files and folders (with --merge: the shards' dataset folders).", show_default=False)],
    output_dir: Annotated[str, typer.Option(
        "--output-dir", "-o", rich_help_panel=DATASET, metavar="DATASET", help="The dataset folder.")],
    prompt: Annotated[list[str] | None, typer.Option(
        "--prompt", "-p", rich_help_panel=options.PROMPT, metavar="CLASS",
        help='A class (repeatable): a prompt that names itself, or NAME=PROMPT[,PROMPT...] for the union of '
             'several prompts, e.g. -p "car=red car,automobile".')] = None,
    dataset_format: Annotated[str, typer.Option(
        "--format", rich_help_panel=DATASET, metavar="coco|yolo|voc|labelstudio",
        autocompletion=lambda: ["coco", "yolo", "voc", "labelstudio"], help="The dataset's layout.")] = "coco",
    semantic: Annotated[bool, typer.Option(
        "--semantic", rich_help_panel=DATASET,
        help="One region per class per image instead of one per connected part.")] = False,
    split: Annotated[str, typer.Option(
        "--split", rich_help_panel=DATASET, metavar="TRAIN[,VAL[,TEST]]",
        help="Fractions of train, val and test, decided by each image's content hash (stable across reruns).")] = "1",
    link: Annotated[bool, typer.Option(
        "--link", rich_help_panel=DATASET, help="Link the images instead of copying them (EXIF-rotated ones are "
                                                "stored upright).")] = False,
    preview: Annotated[int, typer.Option(
        "--preview", min=0, rich_help_panel=DATASET, metavar="N",
        help="Write preview.png: N labelled images with their regions in class colours, and a legend.")] = 0,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Walk subfolders of input folders.")] = False,
    shard: Annotated[str | None, typer.Option(
        "--shard", rich_help_panel=SCALE, metavar="K/N|auto",
        help="Label only shard K of N (as batch --shard); then --merge writes the dataset's index files.")] = None,
    merge: Annotated[bool, typer.Option(
        "--merge", rich_help_panel=SCALE,
        help="Gather the shards in the INPUT folders (the -o folder itself may be one) into -o and write its files.")
    ] = False,
    force: Annotated[bool, typer.Option(
        "--force", "-f", rich_help_panel=DATASET, help="Label again images whose labels are up to date.")] = False,
    *,
    run_options: RunOptions,
) -> None:
    """Label a folder of images by text prompts: a dataset to train a model on (resumable, in any of four formats)."""
    from clipseg_cli.label import LabelJob, parse_classes, parse_splits

    folder = check_output_dir(output_dir)
    if merge:
        raise typer.Exit(_merge([Path(arg) for arg in inputs], folder, preview, run_options.quiet))
    run_options = replace(run_options, force=force)
    run = LabelJob(tuple(parse_classes(prompt or [])), job_from_options([], run_options), format=dataset_format,
                   semantic=semantic, splits=parse_splits(split), link=link, force=force, preview=preview)
    raise typer.Exit(_label(inputs, folder, run, run_options, recursive, shard))


def _label(inputs: list[str], folder: Path, run, run_options: RunOptions, recursive: bool, shard: str | None) -> int:
    """Run the labelling and report it: a bar, one line per bad image, a summary.

    Returns:
        The exit code: 0 all done, 1 some image failed.
    """
    from tqdm import tqdm

    from clipseg_cli.label import Labelling
    from clipseg_cli.run.inputs import collect, no_images
    from clipseg_cli.scale.sharding import parse_shard

    part = parse_shard(shard) if shard is not None else None
    items = collect(inputs, output_dir=folder, recursive=recursive)
    if not items:
        raise ClipSegError(no_images(inputs, recursive))
    outcomes = Labelling(run, folder).run(model_spec(run_options), items, shard=part, progress=not run_options.quiet)
    counts = {"ok": 0, "skipped": 0, "failed": 0}
    regions = 0
    with tqdm(total=len(items), unit="img", file=sys.stderr, leave=False,
              disable=run_options.quiet or not sys.stderr.isatty()) as bar:
        for outcome in outcomes:
            counts[outcome.status] += 1
            regions += outcome.instances
            if outcome.status == "failed":
                bar.write(printable(f"error: {outcome.error}"), file=sys.stderr)
            bar.update(1)
    if not run_options.quiet:
        where = f"shard {part} in {folder}; --merge writes the dataset's files" if part else f"dataset in {folder}"
        typer.echo(f"clipseg: {counts['ok']} image(s) labelled, {counts['skipped']} up to date, "
                   f"{counts['failed']} failed; {regions} region(s); {where}", err=True)
    return 1 if counts["failed"] else 0


def _merge(parts: list[Path], folder: Path, preview: int, quiet: bool) -> int:
    from clipseg_cli.label import merge

    images, failed = merge(parts, folder, preview)
    if not quiet:
        typer.echo(f"clipseg: merged {images} image(s) into {folder}; {failed} had failed in the shards", err=True)
    return 1 if failed else 0
