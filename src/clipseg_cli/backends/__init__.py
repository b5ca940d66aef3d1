"""Runtimes the Segmenter runs the model on: torch (`pytorch.TorchRunner`), bf16 TorchScript programs on the
CPU (`traced.TracedRunner`, traced once and kept by `cache`) and ONNX Runtime (`ort.OrtRunner`, over graphs
exported once by `export` and kept by `cache`); the last two use the `tokenizer` that spares them transformers.
`predictor.Segmenter` holds one runner and does the rest."""

from __future__ import annotations

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
