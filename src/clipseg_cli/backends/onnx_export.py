"""Export our ClipSeg's parts to ONNX graphs with torch.onnx, and quantize them for int8.

Three graphs, each exported from the fp32 model of the checkpoint:

- ``segment``: pixel_values Bx3xHxW, conditional PxE -> logits BxPxhxw (image tower to the deepest
  layer the decoder reads, then the decoder for every (image, prompt) pair);
- ``text``: input_ids PxT, attention_mask PxT -> PxE prompt embeddings;
- ``visual``: pixel_values Px3xHxW -> PxE embeddings of example images (the whole image tower).
"""

from __future__ import annotations

import io
import logging
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from clipseg_cli.backends.graph_cache import OPSET
from clipseg_cli.backends.optimize import is_tool_error, tool_failure
from clipseg_cli.constants import PICKLE_FILE, SAFETENSORS_FILE
from clipseg_cli.errors import ClipSegError
from clipseg_cli.modeling import ClipSeg

GRAPHS = ("segment", "text", "visual")
# Export time on a 2-core EPYC, one whole process: importing torch and transformers and fixed costs (5.5 s for a
# tiny checkpoint), then per MB of weights (published size, 575 MB: 11.3 s on a quiet machine, median of 6 runs;
# 15.2 s with the cores shared). Of the 11.3 s: imports 3.1, checkpoint sha256 0.4, tracing and serialising the
# segment graph 3.1-3.6 and the text graph 1.9, ONNX Runtime's optimise and store 0.9 per graph (the first one
# while the second traces), checksums and fsyncs 0.1.
_FIXED_SECONDS, _MB_PER_SECOND = 5.5, 100.0


class SegmentGraph(nn.Module):
    """Image tower and decoder: the logits of every prompt for every image."""

    def __init__(self, model: ClipSeg) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor, conditional: torch.Tensor) -> torch.Tensor:
        """Arguments: pixel_values Bx3xHxW, conditional PxE. Returns: BxPxhxw logits."""
        batch, prompts = pixel_values.shape[0], conditional.shape[0]
        activations = self.model.encode_image(pixel_values)
        logits = self.model.decode(activations, conditional.repeat(batch, 1), tuple(pixel_values.shape[-2:]))
        return logits.view(batch, prompts, logits.shape[-2], logits.shape[-1])


class TextGraph(nn.Module):
    """The text tower and its projection."""

    def __init__(self, model: ClipSeg) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Arguments: input_ids, attention_mask PxT. Returns: PxE."""
        return self.model.embed_text(input_ids, attention_mask)


class VisualGraph(nn.Module):
    """The whole image tower and its projection (example-image prompts)."""

    def __init__(self, model: ClipSeg) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Arguments: pixel_values Px3xHxW. Returns: PxE."""
        return self.model.embed_image(pixel_values)


def export_seconds(directory: Path, graphs: list[str]) -> int:
    """A rough forecast of exporting ``graphs`` from a checkpoint folder, for the one line shown while it runs.

    Returns:
        Whole seconds, at least 1.
    """
    sizes = [(Path(directory) / name).stat().st_size for name in (SAFETENSORS_FILE, PICKLE_FILE)
             if (Path(directory) / name).is_file()]
    megabytes = (sizes[0] if sizes else 0) / 1e6
    return max(1, round(_FIXED_SECONDS + megabytes * len(graphs) / 2 / _MB_PER_SECOND))


def export_graph(model: ClipSeg, graph: str, size: tuple[int, int], example: tuple[int, int] = (1, 1)) -> bytes:
    """Export one graph of an fp32 model at the model input ``size`` (height, width).

    Batch, prompt and token counts stay dynamic; the input size is fixed. The segment graph is traced on
    ``example`` (images, prompts): one of each runs the image tower once, and gives the same graph, byte for
    byte, as more (tests/test_backends.py holds it against 2 and 3).

    Returns:
        The serialised ONNX model.
    """
    height, width = size
    pixels = torch.zeros(2, 3, height, width)
    if graph == "segment":
        images, prompts = example
        module = SegmentGraph(model)
        args = (torch.zeros(images, 3, height, width), torch.zeros(prompts, model.config.projection_dim))
        names, outputs = ["pixel_values", "conditional"], ["logits"]
        axes = {"pixel_values": {0: "images"}, "conditional": {0: "prompts"}, "logits": {0: "images", 1: "prompts"}}
    elif graph == "text":
        ids = torch.ones(2, 5, dtype=torch.long)
        module, args = TextGraph(model), (ids, torch.ones_like(ids))
        names, outputs = ["input_ids", "attention_mask"], ["embeddings"]
        axes = {"input_ids": {0: "prompts", 1: "tokens"}, "attention_mask": {0: "prompts", 1: "tokens"},
                "embeddings": {0: "prompts"}}
    elif graph == "visual":
        module, args = VisualGraph(model), (pixels,)
        names, outputs = ["pixel_values"], ["embeddings"]
        axes = {"pixel_values": {0: "prompts"}, "embeddings": {0: "prompts"}}
    else:
        raise ValueError(f"unknown graph {graph!r}; choose one of {', '.join(GRAPHS)}")
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(module.eval(), args, buffer, dynamo=False, opset_version=OPSET, input_names=names,
                          output_names=outputs, dynamic_axes=axes, do_constant_folding=True)
    return buffer.getvalue()


def quantize_int8(graph: bytes) -> bytes:
    """Dynamic int8 quantization (weights int8, activations quantized per call) with ONNX Runtime's tool.

    Only the matrix products: they hold nearly all the work, and ONNX Runtime before 1.2x has no
    CPU kernel for the int8 convolution (the patch embedding) that quantizing Conv would give.

    Returns:
        The quantized serialised ONNX model.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    folder = Path(tempfile.gettempdir())
    try:
        with tempfile.TemporaryDirectory(prefix="clipseg-int8-") as folder:
            source, target = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
            source.write_bytes(graph)
            root.setLevel(logging.ERROR)  # its advice to pre-process, logged on the root logger
            try:
                quantize_dynamic(source, target, op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8)
            finally:
                root.setLevel(level)
            return target.read_bytes()
    except Exception as exc:  # a full temporary folder: an OSError, or onnx's and protobuf's own errors
        if not isinstance(exc, OSError) and not is_tool_error(exc):
            raise
        raise ClipSegError(tool_failure(f"cannot quantize the model in the temporary folder {folder}", exc,
                                        Path(folder)) + "; set TMPDIR to a folder with room") from None
