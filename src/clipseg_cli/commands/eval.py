"""``clipseg eval MANIFEST``: how good are the masks? The CLIPSeg paper's metrics on your own masks."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from clipseg_cli.commands import options
from clipseg_cli.commands.settings import MODEL_AND_MASK_OPTIONS, RunOptions, with_run_options
from clipseg_cli.errors import ClipSegError

METRICS = (  # key, name, what it is
    ("miou", "mIoU", "mean over prompts of each prompt's IoU, at the threshold"),
    ("iou_fg", "IoU (foreground)", "IoU of all object pixels of all records together, at the threshold"),
    ("iou_binary", "IoU (binary)", "mean of the object's and the background's IoU, at the threshold"),
    ("ap", "AP", "area under the precision-recall curve over 49 thresholds 0.02 .. 0.98"),
    ("best_miou", "best mIoU", "mIoU at the best of those 49 thresholds"),
)


@with_run_options(only=MODEL_AND_MASK_OPTIONS)
def eval_command(
    manifest: Annotated[Path, typer.Argument(
        help="JSON Lines (the records `clipseg batch --json` prints) or CSV with image,prompt,mask columns.",
        show_default=False)],
    json_output: Annotated[bool, typer.Option(
        "--json", rich_help_panel=options.OUTPUT, help="Print the metrics as one JSON object on stdout.")] = False,
    per_record: Annotated[bool, typer.Option(
        "--per-record", rich_help_panel=options.OUTPUT, help="Also print one line per record (JSON with --json).")]
    = False,
    plot: Annotated[Path | None, typer.Option(
        "--plot", rich_help_panel=options.OUTPUT, metavar="PNG",
        help="Also draw the precision-recall curve and mIoU against the threshold into this PNG (needs matplotlib: "
             "the plot extra).")] = None,
    *,
    run_options: RunOptions,
) -> None:
    """Score a model on a manifest of masks: mIoU, foreground and binary IoU, AP, best threshold.

    Exit code 1 when some records were skipped (each is named on stderr), 2 when none is usable.
    """
    from clipseg_cli.errors import printable
    from clipseg_cli.postprocess import PostProcess
    from clipseg_cli.prompts import check_texts
    from clipseg_cli.training.api import evaluate

    o = run_options
    check_texts([], negatives=o.negatives or [], templates=o.templates or [])
    if plot is not None:
        from clipseg_cli.training.plot import check_plotting

        check_plotting(plot)
    post = PostProcess(threshold=o.threshold, blur=o.blur, dilate=o.dilate, erode=o.erode, min_area=o.min_area,
                       invert=o.invert)
    evaluation = evaluate(manifest, weights=o.weights, device=o.device, precision=o.precision, revision=o.revision,
                          offline=o.offline or None, post=post, templates=o.templates or [],
                          negatives=o.negatives or [], max_pixels=o.max_pixels, refine=o.refine,
                          sam_weights=o.sam_weights, progress=not o.quiet)
    for problem in evaluation.skipped:
        print(printable(f"skipped: {problem}"), file=sys.stderr)
    _run(evaluation, json_output, per_record, o.quiet)
    summary = evaluation.summary()
    if not summary["records"]:
        raise ClipSegError(f"{manifest}: no usable records; each skipped one is named above")
    if plot is not None:
        from clipseg_cli.training.plot import plot_curves

        plot_curves(evaluation.scores, plot)
    if json_output:
        print(json.dumps(summary), flush=True)
    else:
        _table(summary)
    raise typer.Exit(1 if summary["skipped"] else 0)


def _run(evaluation, json_output: bool, per_record: bool, quiet: bool) -> None:
    """Score every record, with a progress bar; print skipped records as they come and, with ``per_record``,
    one line per manifest line (scored or skipped) in manifest order.
    """
    from tqdm import tqdm

    from clipseg_cli.errors import printable
    from clipseg_cli.textlines import json_text

    manifest = evaluation.manifest
    pending: dict[int, str] = {}  # manifest line -> its per-record line, until the lines before it are printed
    for line, problem in zip(manifest.problem_lines, manifest.problems, strict=True):
        pending[line] = (json_text({"line": line, "image": None, "prompt": None, "mask": None, "status": "skipped",
                                    "iou": None, "error": printable(problem)}) if json_output
                         else printable(f"skipped  {problem}"))
    order = iter(sorted([*pending, *(record.line for record in manifest.records)]))
    waiting = next(order, None)
    bar = tqdm(total=len(manifest.records), unit="rec", file=sys.stderr, leave=False,
               disable=quiet or not sys.stderr.isatty())
    for outcome in evaluation.outcomes():
        bar.update(1)
        if outcome.error:
            bar.write(printable(f"skipped: {outcome.error}"), file=sys.stderr)
        if not per_record:
            continue
        if json_output:
            shown = json_text({key: printable(v) if isinstance(v, str) else v for key, v in outcome.to_json().items()})
        elif outcome.error:
            shown = printable(f"skipped  {outcome.error}")
        else:
            shown = printable(f"{outcome.iou:.4f}  {outcome.record.image}  {outcome.record.prompt}")
        pending[outcome.record.line] = shown
        while waiting in pending:
            print(pending.pop(waiting), flush=True)
            waiting = next(order, None)
    bar.close()


def _table(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{summary['records']} record(s), {summary['prompts']} prompt(s), "
                        f"{summary['skipped']} skipped; threshold {summary['threshold']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("what it is")
    for key, name, meaning in METRICS:
        value = summary[key]
        table.add_row(name, "n/a" if value is None else f"{value:.4f}", meaning)
    table.add_row("best threshold", f"{summary['best_threshold']:.2f}", "the threshold of the best mIoU")
    Console().print(table)
