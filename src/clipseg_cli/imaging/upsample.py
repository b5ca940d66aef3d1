"""Logits to full-size probabilities in numpy: torch's bilinear upsampling (align_corners=False) and the sigmoid.

The ONNX Runtime path uses these instead of torch's; they agree with ``F.interpolate`` to float
rounding (1.5e-7 of the largest logit, tested to 1e-6), computing the sample positions and the
weights as torch does, along rows first, then columns.
"""

from __future__ import annotations

import numpy as np


def source_positions(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each output pixel samples the input, as torch computes it for align_corners=False.

    Returns:
        (first index, second index, weight of the second), each of length ``size_out``.
    """
    scale = np.float64(np.float32(size_in) / np.float32(size_out))  # torch's float32 scale
    # scale * (i + 0.5) - 0.5 rounded once to float32, as torch's fused multiply-add gives it: rounding
    # twice moves a position by one float32 step (3e-5 near 352), the weights with it (1.5e-5 relative)
    source = ((np.arange(size_out, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    np.maximum(source, 0, out=source)
    first = source.astype(np.int64)
    second = np.minimum(first + 1, size_in - 1)
    return first, second, (source - first).astype(np.float32)


def upsample_bilinear(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Upsample maps bilinearly to an image's size.

    Arguments:
        logits: Pxhxw float32.
        size: (width, height) of the image.

    Returns:
        PxHxW float32.
    """
    width, height = size
    logits = np.asarray(logits, dtype=np.float32)
    x0, x1, wx = source_positions(logits.shape[2], width)
    y0, y1, wy = source_positions(logits.shape[1], height)
    rows = logits[:, :, x0] * (1 - wx)
    rows += logits[:, :, x1] * wx
    out = rows[:, y0] * (1 - wy)[:, None]
    second = rows[:, y1]
    second *= wy[:, None]
    out += second
    return out


def sigmoid_(values: np.ndarray) -> np.ndarray:
    """The logistic function, in place.

    Returns:
        ``values``, now in [0, 1].
    """
    with np.errstate(over="ignore"):  # exp(-x) overflows to inf for x < -88: the probability is then 0
        np.negative(values, out=values)
        np.exp(values, out=values)
    values += 1
    np.reciprocal(values, out=values)
    return values
