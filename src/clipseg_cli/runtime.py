"""Where, in which precision and with which runtime the model runs: choices resolved once, at load.

Deciding does not import torch unless a GPU may be present: a CPU run through ONNX Runtime never
loads it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from typing import TYPE_CHECKING

from clipseg_cli.errors import ClipSegError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fast", "fp32", "bf16", "fp16", "int8")
BACKENDS = ("auto", "torch", "onnxruntime")
TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
# Settings with which torch runs without AVX-512 (its own switch and oneDNN's): bf16 units then go unused.
_NO_AVX512 = {"ATEN_CPU_CAPABILITY": ("default", "avx2", "zvector"), "ONEDNN_MAX_CPU_ISA": ("sse41", "avx", "avx2")}
_GPU_NODES = ("/dev/nvidiactl", "/dev/kfd", "/dev/dxg")  # NVIDIA, AMD ROCm, WSL


@dataclass(frozen=True)
class Runtime:
    """What runs the model: ``backend`` torch or onnxruntime, ``device`` cpu/cuda/mps, ``precision`` fp32..int8."""

    backend: str
    device: str
    precision: str


@cache
def _cpu_flags() -> frozenset[str]:
    """Returns: the flags of the first ``flags`` line of /proc/cpuinfo; empty where it cannot be read (not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            return frozenset(next((line for line in info if line.startswith("flags")), "").split())
    except OSError:
        return frozenset()


def _torch_kept_off_avx512() -> bool:
    """Returns: whether ``ATEN_CPU_CAPABILITY=avx2`` or ``ONEDNN_MAX_CPU_ISA=AVX2`` (how an AVX2-only CPU is
    emulated) keeps torch off AVX-512, and so off its bf16 units."""
    return any(os.environ.get(name, "").lower() in lower for name, lower in _NO_AVX512.items())


def cpu_has_amx_bf16() -> bool:
    """Whether this CPU has AMX bf16 tiles (flag ``amx_bf16``) that torch may use; the emulation settings
    (`_torch_kept_off_avx512`) count as none.

    Returns:
        True where bf16 outruns int8: AMX's tiles multiply bf16 several times faster than fp32, while
        AVX512-BF16's dot products alone give about 2x fp32, less than int8 with VNNI or even AVX2.
    """
    return not _torch_kept_off_avx512() and "amx_bf16" in _cpu_flags()


def fast_cpu_precision() -> str:
    """What ``--precision fast`` runs on this CPU: the one place of that rule.

    Returns:
        "bf16" (torch) on CPUs with AMX bf16 tiles, "int8" (ONNX Runtime) on every other CPU.
    """
    return "bf16" if cpu_has_amx_bf16() else "int8"


def may_have_gpu() -> bool:
    """Whether torch might see a GPU, decided without importing torch.

    Returns:
        False on Linux without GPU device nodes, or with torch's CPU-only build; True otherwise.
    """
    try:
        if "+cpu" in metadata.version("torch"):
            return False
    except metadata.PackageNotFoundError:
        return False
    if sys.platform != "linux":
        return True  # macOS (MPS) and Windows: ask torch
    return any(os.path.exists(node) for node in _GPU_NODES)


def choose_runtime(device: str = "auto", precision: str = "auto", backend: str = "auto") -> Runtime:
    """Choose backend, device and precision.

    ``auto`` is the exact class everywhere: fp32 through ONNX Runtime on CPUs (torch where ``backend``
    says so), fp32 with TF32 off on GPUs. ``fast`` picks the fastest precision this hardware runs
    well: bf16 (torch) on CPUs with AMX bf16 tiles, int8 (ONNX Runtime) on other CPUs (AVX512-BF16
    without AMX included: `fast_cpu_precision`), fp16 on GPUs; with ``backend`` torch it is bf16, with
    onnxruntime int8. ``fp32``, ``bf16`` and ``fp16`` run on torch (fp32 is the reference computation, bit for
    bit); ``int8`` (dynamic quantization) runs on ONNX Runtime, on CPUs only. ``backend`` forces the
    runtime where it can.

    Returns:
        The runtime; raises ClipSegError for unknown names and impossible combinations.
    """
    for option, value, choices in (("device", device, DEVICES), ("precision", precision, PRECISIONS),
                                   ("backend", backend, BACKENDS)):
        if value not in choices:
            raise ClipSegError(f"unknown {option} {value!r}; choose one of {', '.join(choices)}")
    on_cpu = device == "cpu" or (device == "auto" and not may_have_gpu())
    kind = "cpu" if on_cpu else resolve_device(device).type
    if kind != "cpu":
        if precision == "int8" or backend == "onnxruntime":
            raise ClipSegError(f"--device {kind}: int8 and ONNX Runtime run on CPUs only; use --device cpu")
        return Runtime("torch", kind, {"auto": "fp32", "fast": "fp16"}.get(precision, precision))
    if precision == "auto":
        precision = "fp32"
        backend = "torch" if backend == "torch" else "onnxruntime"
    elif precision == "fast":
        precision = {"torch": "bf16", "onnxruntime": "int8"}.get(backend) or fast_cpu_precision()
    if precision == "int8":
        if backend == "torch":
            raise ClipSegError("--precision int8 runs on ONNX Runtime only")
        return Runtime("onnxruntime", kind, precision)
    if backend == "onnxruntime" and precision != "fp32":
        raise ClipSegError(f"ONNX Runtime runs fp32 or int8, not {precision}")
    return Runtime("onnxruntime" if backend == "onnxruntime" else "torch", kind, precision)


def resolve_device(device: str) -> torch.device:
    """Turn ``auto`` into the best available device and check the others exist (imports torch).

    Returns:
        The torch device to run on.
    """
    import torch

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


def torch_dtype(precision: str) -> torch.dtype:
    """Returns: the torch dtype of fp32, bf16 or fp16."""
    import torch

    return getattr(torch, TORCH_DTYPES[precision])
