"""``clipseg eval --plot``: the precision-recall curve and mIoU against the 49 thresholds, as a PNG."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clipseg_cli.errors import ClipSegError
from clipseg_cli.imaging.writing import PALETTE, atomic_write
from clipseg_cli.training.metrics import THRESHOLDS, Scores, fg_iou

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MISSING = "--plot needs matplotlib: pip install 'clipseg-cli[plot]'"


def check_plotting(path: Path) -> None:
    """Refuse --plot before any work when matplotlib is not installed or the PNG's folder is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ClipSegError(MISSING) from None
    folder = Path(path).parent
    if not folder.is_dir():
        raise ClipSegError(f"--plot {path}: the folder {folder} does not exist; create it or choose another")


def plot_curves(scores: Scores, path: Path) -> None:
    """Draw the precision-recall curve (left) and the mean IoU at each threshold (right, the best
    marked), one line per prompt when there are several, and write them to ``path`` as PNG atomically.

    Precision and recall are the paper's ``tp / (1 + tp + fp)`` and ``tp / (1 + tp + fn)`` on the
    counts summed over each prompt's records (see `clipseg_cli.training.metrics`).
    """
    figure = curves_figure(scores)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    try:
        atomic_write(Path(path), lambda handle: handle.write(buffer.getvalue()))
    except OSError as exc:
        raise ClipSegError(f"--plot {path}: cannot write it: {exc.strerror or exc}") from None


def curves_figure(scores: Scores) -> Figure:
    """The figure `plot_curves` writes: precision-recall on the left, mIoU against the threshold on the right.

    Returns:
        A matplotlib Figure (Agg, never shown).
    """
    import matplotlib

    matplotlib.use("Agg")  # no display needed, and none opened
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4.2), dpi=100, layout="constrained")
    pr_axes, iou_axes = figure.subplots(1, 2)
    prompts = sorted(scores.curve)
    lines = [(prompt, scores.curve[prompt], np.asarray(PALETTE[i % len(PALETTE)]) / 255) for i, prompt in
             enumerate(prompts)]
    if len(prompts) > 1:
        lines.append(("all prompts", sum(scores.curve[p] for p in prompts), "black"))
    for name, counts, color in lines:
        tp, fp, fn, _ = counts.astype(float)
        made = tp + fp > 0
        pr_axes.plot((tp / (1 + tp + fn))[made], (tp / (1 + tp + fp))[made], color=color, label=name,
                     marker=".", markersize=3)
        if name in scores.curve:
            iou_axes.plot(THRESHOLDS, fg_iou(counts), color=color, label=name)
    summary = scores.summary()
    mean = np.mean([fg_iou(scores.curve[p]) for p in prompts], axis=0)
    if len(prompts) > 1:
        iou_axes.plot(THRESHOLDS, mean, color="black", linewidth=2, label="mIoU")
    best = summary["best_threshold"]
    iou_axes.axvline(best, color="grey", linestyle="--", linewidth=1)
    iou_axes.plot([best], [summary["best_miou"]], "o", color="black")
    right, high = best > 0.5, summary["best_miou"] > 0.5  # the label points inwards: never over the title or out
    iou_axes.annotate(f"best {best:.2f}: {summary['best_miou']:.3f}", (best, summary["best_miou"]),
                      textcoords="offset points", xytext=(-6 if right else 6, -6 if high else 6),
                      ha="right" if right else "left", va="top" if high else "bottom",
                      bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})
    ap = "n/a" if summary["ap"] is None else f"{summary['ap']:.3f}"
    pr_axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=f"precision-recall (AP {ap})")
    iou_axes.set(xlabel="threshold", ylabel="IoU", xlim=(0, 1), ylim=(0, 1.02),
                 title=f"mIoU against the threshold ({summary['records']} records)")
    for axes in (pr_axes, iou_axes):
        axes.grid(alpha=0.3)
        if len(prompts) > 1:
            axes.legend(fontsize="small")
    return figure
