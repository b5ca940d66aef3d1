"""The CLIPSeg paper's segmentation metrics, computed as its code computes them.

Followed: ``FixedIntervalMetrics`` in ``metrics.py`` of github.com/timojl/clipseg (``add`` and
``value``), which score.py uses for PhraseCut and the one-shot tasks:

- thresholds: ``np.linspace(0, 1, 51)[1:-1]``, the 49 values 0.02 .. 0.98; a pixel is predicted
  foreground at threshold t where its probability is ``> t`` (compared in float32, as torch does);
- counts tp, fp, fn, tn per record and threshold, summed over all records (``summed``) and over the
  records of each class (``summed_by_cls``); our class is the prompt text;
- foreground IoU ``tp / (1 + tp + fp + fn)`` on the summed counts; binary IoU the mean of the
  foreground and the background IoU ``tn / (1 + tn + fn + fp)``; mean IoU the mean over classes
  of each class's foreground IoU (the ``+ 1`` is theirs: a class with no object pixels scores 0);
- AP: precision ``tp / (1 + tp + fp)`` and recall ``tp / (1 + tp + fn)`` at the thresholds where
  something is predicted, duplicate pairs removed, sorted by recall, integrated with Simpson's
  rule (``scipy.integrate.simps``, whose default for an even number of points averaged the two
  one-trapezoid variants; `simpson` below is that rule, so no scipy is needed);
- the best threshold: the one of the 49 with the highest mean IoU (their ``miou_best_t``).

Where we differ, on purpose: the IoUs *at the threshold* (``miou``, ``iou_fg``, ``iou_binary``)
are counted on the masks ``clipseg batch`` writes (``p >= threshold``, then the post-processing),
and everything is scored at the image's own size, the masks' resolution (the paper's PhraseCut
numbers were scored at 352 x 352 with the ground truth resized by nearest neighbour).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

THRESHOLDS = np.linspace(0, 1, 51)[1:-1].astype(np.float32)  # 0.02 .. 0.98, as FixedIntervalMetrics
COUNTS = ("tp", "fp", "fn", "tn")


def threshold_counts(prob: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """tp, fp, fn, tn of ``prob > t`` against ``truth`` at every threshold of `THRESHOLDS`.

    The same numbers as FixedIntervalMetrics.add's sort and scan, from one histogram.

    Arguments:
        prob: HxW probabilities.
        truth: HxW bool.

    Returns:
        int64 array 4 x 49: rows tp, fp, fn, tn.
    """
    p = np.asarray(prob, dtype=np.float32).ravel()
    g = np.asarray(truth, dtype=bool).ravel()
    # bins[i] = how many thresholds lie strictly below p[i]: p[i] counts as positive at exactly those
    bins = np.searchsorted(THRESHOLDS, p, side="left")
    size = len(THRESHOLDS) + 1
    at_or_above = np.cumsum(np.bincount(bins, minlength=size)[::-1])[::-1]  # pixels with > j thresholds below
    positives_at_or_above = np.cumsum(np.bincount(bins[g], minlength=size)[::-1])[::-1]
    predicted = at_or_above[1:]  # pixels with p > THRESHOLDS[j]
    tp = positives_at_or_above[1:]
    fp = predicted - tp
    fn = int(g.sum()) - tp
    tn = len(p) - predicted - fn
    return np.stack([tp, fp, fn, tn]).astype(np.int64)


def mask_counts(mask: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """tp, fp, fn, tn of a binary mask against the truth.

    Returns:
        int64 array of 4.
    """
    mask, truth = np.asarray(mask, dtype=bool), np.asarray(truth, dtype=bool)
    tp = int(np.count_nonzero(mask & truth))
    predicted, positives = int(np.count_nonzero(mask)), int(np.count_nonzero(truth))
    return np.array([tp, predicted - tp, positives - tp, mask.size - predicted - positives + tp], dtype=np.int64)


def fg_iou(counts: np.ndarray) -> np.ndarray:
    """Foreground IoU ``tp / (1 + tp + fp + fn)`` of count rows (tp, fp, fn, tn) x ..."""
    tp, fp, fn, _ = counts
    return tp / (1 + tp + fp + fn)


def binary_iou(counts: np.ndarray) -> np.ndarray:
    """Mean of the foreground and the background IoU, as FixedIntervalMetrics' biniou."""
    tp, fp, fn, tn = counts
    return 0.5 * tp / (1 + tp + fp + fn) + 0.5 * tn / (1 + tn + fn + fp)


def simpson(y: np.ndarray, x: np.ndarray) -> float:
    """Simpson's rule on samples at uneven ``x``, as ``scipy.integrate.simps(y, x)`` (even='avg').

    Returns:
        The integral; 0 for fewer than two samples.
    """
    y, x = np.asarray(y, dtype=float), np.asarray(x, dtype=float)
    n = len(y)
    if n < 2:
        return 0.0
    if n % 2:
        return _basic_simpson(y, x, 0, n - 2)
    first = _basic_simpson(y, x, 0, n - 3) + 0.5 * (x[-1] - x[-2]) * (y[-1] + y[-2])
    last = _basic_simpson(y, x, 1, n - 2) + 0.5 * (x[1] - x[0]) * (y[1] + y[0])
    return (first + last) / 2


def _basic_simpson(y: np.ndarray, x: np.ndarray, start: int, stop: int) -> float:
    """scipy's ``_basic_simps`` for uneven spacing, over the point pairs start, start+2, ... < stop."""
    h = np.diff(x)
    h0, h1 = h[start:stop:2], h[start + 1 : stop + 1 : 2]
    y0, y1, y2 = y[start:stop:2], y[start + 1 : stop + 1 : 2], y[start + 2 : stop + 2 : 2]
    hsum, hprod = h0 + h1, h0 * h1
    ratio = np.divide(h0, h1, out=np.zeros_like(h0), where=h1 != 0)
    inverse = np.divide(1.0, ratio, out=np.zeros_like(ratio), where=ratio != 0)
    middle = hsum * np.divide(hsum, hprod, out=np.zeros_like(hsum), where=hprod != 0)
    return float(np.sum(hsum / 6.0 * (y0 * (2.0 - inverse) + y1 * middle + y2 * (2.0 - ratio))))


def average_precision(summed: np.ndarray) -> float | None:
    """AP from summed counts, as FixedIntervalMetrics.value.

    Returns:
        The area under the precision-recall curve; None when nothing is predicted at any threshold.
    """
    tp, fp, fn, _ = summed.astype(float)
    made = tp + fp > 0
    if not made.any():
        return None
    pairs = sorted(set(zip((tp / (1 + tp + fn))[made].tolist(), (tp / (1 + tp + fp))[made].tolist(),
                           strict=True)), key=lambda pair: pair[0])
    recalls, precisions = zip(*pairs, strict=True)
    return float(simpson(np.array(precisions), np.array(recalls)))


@dataclass
class Scores:
    """Counts accumulated over records; `summary` turns them into the paper's metrics."""

    threshold: float
    curve: dict[str, np.ndarray] = field(default_factory=lambda: defaultdict(lambda: np.zeros((4, len(THRESHOLDS)),
                                                                                                   np.int64)))
    at_threshold: dict[str, np.ndarray] = field(default_factory=lambda: defaultdict(lambda: np.zeros(4, np.int64)))
    records: int = 0

    def add(self, prompt: str, prob: np.ndarray, mask: np.ndarray, truth: np.ndarray) -> float:
        """Count one record: the map for the 49 thresholds, the mask for the IoUs at the threshold.

        Arguments:
            prob: HxW map in [0, 1].
            mask: HxW bool, what batch writes.
            truth: HxW bool.

        Returns:
            The record's own foreground IoU at the threshold (for ``--per-record``).
        """
        self.curve[prompt] += threshold_counts(prob, truth)
        counts = mask_counts(mask, truth)
        self.at_threshold[prompt] += counts
        self.records += 1
        return float(fg_iou(counts))

    def summary(self) -> dict:
        """The metrics; IoUs and AP in [0, 1], None where there is nothing to score.

        Returns:
            {"miou", "iou_fg", "iou_binary", "ap", "threshold", "best_threshold", "best_miou",
            "best_iou_fg", "prompts", "records"}.
        """
        if not self.records:
            return {key: None for key in ("miou", "iou_fg", "iou_binary", "ap", "best_threshold", "best_miou",
                                          "best_iou_fg")} | {"threshold": self.threshold, "prompts": 0, "records": 0}
        classes = sorted(self.curve)
        summed_curve = sum(self.curve[c] for c in classes)
        summed = sum(self.at_threshold[c] for c in classes)
        mean_ious = np.mean([fg_iou(self.curve[c]) for c in classes], axis=0)
        best = int(np.argmax(mean_ious))
        return {
            "miou": float(np.mean([fg_iou(self.at_threshold[c]) for c in classes])),
            "iou_fg": float(fg_iou(summed)),
            "iou_binary": float(binary_iou(summed)),
            "ap": average_precision(summed_curve),
            "threshold": self.threshold,
            "best_threshold": round(float(THRESHOLDS[best]), 2),
            "best_miou": float(mean_ious[best]),
            "best_iou_fg": float(np.max(fg_iou(summed_curve))),
            "prompts": len(classes),
            "records": self.records,
        }
