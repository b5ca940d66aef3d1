"""Runtimes the Segmenter runs the model on: torch (`pytorch.TorchRunner`), bf16 TorchScript programs on the
CPU (`traced.TracedRunner`, traced once and kept by `cache`) and ONNX Runtime (`ort.OrtRunner`, over graphs
exported once by `export` and kept by `cache`); the last two use the `tokenizer` that spares them transformers.
`predictor.Segmenter` holds one runner and does the rest."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np


class Runner(Protocol):
    """What a Segmenter needs of a runtime. Arrays are the runtime's own (torch tensors or numpy)."""

    backend: str  # torch or onnxruntime
    precision: str  # fp32, bf16, fp16 or int8
    device_type: str  # cpu, cuda or mps
    identity: dict[str, str]  # weights, precision and device, for fingerprints

    def embed_texts(self, texts: list[str]) -> Any:
        """Returns: PxE embeddings of texts."""

    def embed_images(self, pixels: np.ndarray) -> Any:
        """Arguments: pixels Px3xHxW float32, normalised. Returns: PxE embeddings."""

    def logits(self, pixels: np.ndarray, conditional: Any) -> Any:
        """Arguments: pixels Bx3xHxW float32, conditional PxE. Returns: BxPxhxw float32 logits on the CPU."""

    def stack(self, rows: list) -> Any:
        """Returns: rows (each E) stacked into PxE."""

    def drop_unused(self) -> None:
        """Free what only new prompts would need."""


def prepare_for_cpu(directory: Path, progress: bool = True) -> list[str]:
    """Export and trace ahead what ``auto`` and ``fast`` run on this CPU (imports torch): the exact-class graphs,
    then the fast class's int8 segment graph, or its bf16 programs where fast means bf16 (`fast_cpu_precision`).
    Each step says in one line that it runs, unless the cache already holds its result.

    Raises CacheUnwritable when the cache cannot take them.

    Returns:
        The precisions prepared now ("fp32", "int8", "bf16"); empty when the cache held everything.
    """
    from clipseg_cli.backends.ort import prepare_graphs
    from clipseg_cli.runtime import fast_cpu_precision

    done = ["fp32"] if prepare_graphs(directory, progress) else []
    fast = fast_cpu_precision()
    if fast == "bf16":
        from clipseg_cli.backends.traced import prepare_programs

        made = prepare_programs(directory, progress)
    else:
        made = prepare_graphs(directory, progress, fast)
    return [*done, fast] if made else done
