"""Where and in which precision the model runs: choices resolved once, at load."""

from __future__ import annotations

from functools import cache

import torch

from clipseg_cli.errors import ClipSegError

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@cache
def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU has native bf16 matrix units (AMX or AVX512-BF16).

    Returns:
        True when bf16 matmuls run natively (several times faster than fp32).
    """
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            flags = next((line for line in info if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_device(device: str) -> torch.device:
    """Turn ``auto`` into the best available device and check the others exist.

    Returns:
        The torch device to run on.
    """
    if device not in DEVICES:
        raise ClipSegError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ClipSegError("--device cuda: no CUDA GPU is visible to torch; use --device cpu or auto")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ClipSegError("--device mps: Apple's MPS backend is not available; use --device cpu or auto")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """Turn ``auto`` into fp16 on GPUs, bf16 on CPUs with bf16 units, fp32 elsewhere.

    Returns:
        The dtype of the weights and activations.
    """
    if precision == "auto":
        if device.type in ("cuda", "mps"):
            return torch.float16
        return torch.bfloat16 if cpu_has_bf16_matmul() else torch.float32
    if precision not in PRECISIONS:
        raise ClipSegError(f"unknown precision {precision!r}; choose one of auto, {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]
