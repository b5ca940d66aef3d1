"""The bf16 model on the CPU as TorchScript programs traced once per checkpoint: torch at start, not transformers.

The first run builds our modules from the checkpoint (transformers' CLIP classes), applies the bf16
rewrites (`modeling.fastpath.speed_up`) and traces them with ``torch.jit.trace`` into programs stored in
the checkpoint's cache entry (`backends.cache`, beside its ONNX graphs, with checksums): ``segment``
(image tower to the deepest layer read, then the decoder), ``text`` and, on the first example-image
prompt, ``visual``. Later runs load them with ``torch.jit.load`` (about 0.7 s per 300 MB; torch.export's
programs took 1.1 s per 180 MB and rebuild Python code when loaded). A trace records the same ATen
calls as the eager modules make, so the masks equal the eager bf16 path's bit for bit (tested).
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from clipseg_cli import LOGGER
from clipseg_cli.backends.graph_cache import (
    CacheDamaged,
    entry_dir,
    prepare,
    program_path,
    seal_graph,
    unwritable,
    use,
    verify_graph,
)
from clipseg_cli.backends.tokenizer import ClipTokenizer
from clipseg_cli.checkpoints.loading import check_processing
from clipseg_cli.fingerprint import checkpoint_digest
from clipseg_cli.imaging.preprocess import Preprocessing
from clipseg_cli.imaging.writing import atomic_write
from clipseg_cli.modeling.config import ClipSegConfig

LOG = logging.getLogger(LOGGER)

PROGRAMS = ("segment", "text", "visual")
PRECISION = "bf16"


class TracedRunner:
    """The bf16 programs of a checkpoint run by TorchScript on the CPU (a `backends.Runner`)."""

    backend = "torch"
    device_type = "cpu"
    precision = PRECISION
    device = torch.device("cpu")
    dtype = torch.bfloat16

    def __init__(self, directory: Path, config: ClipSegConfig, preprocessing: Preprocessing,
                 progress: bool = True) -> None:
        self.directory = directory
        self.config = config
        self.preprocessing = preprocessing
        self.progress = progress
        self.entry = entry_dir(directory)
        self.lock = use(self.entry)  # no other run's cleanup removes the entry while this runner lives
        self.weights = checkpoint_digest(directory)
        self.tokenizer: ClipTokenizer | None = None  # built by `load`
        self._programs: dict[str, torch.jit.ScriptModule] = {}

    @classmethod
    def load(cls, directory: Path, progress: bool = True) -> tuple[TracedRunner, Preprocessing]:
        """Open a checkpoint folder's bf16 programs, tracing them first when the cache has none for it.

        Raises CacheUnwritable when they must be traced and cannot be stored.

        Returns:
            (the runner, the checkpoint's preprocessing).
        """
        config, preprocessing = check_processing(directory)
        runner = cls(directory, config, preprocessing, progress)
        runner.tokenizer = ClipTokenizer(directory, config.text["max_position_embeddings"], config.text["vocab_size"])
        runner._ensure("segment", "text")
        return runner, preprocessing

    @property
    def identity(self) -> dict[str, str]:
        """The eager bf16 path's (`TorchRunner`): the masks are the same bit for bit."""
        return {"weights": self.weights, "precision": "bfloat16", "device": "cpu"}

    def drop_unused(self) -> None:
        """Free the prompt programs."""
        self._programs.pop("text", None)
        self._programs.pop("visual", None)

    @torch.inference_mode()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """Returns: PxE bf16 embeddings of texts, padded together as the eager path pads them."""
        ids, mask = self.tokenizer(texts)
        return self._run("text", torch.from_numpy(ids), torch.from_numpy(mask))

    @torch.inference_mode()
    def embed_images(self, pixels: np.ndarray) -> torch.Tensor:
        return self._run("visual", torch.from_numpy(pixels).to(self.dtype))

    @torch.inference_mode()
    def logits(self, pixels: np.ndarray, conditional: torch.Tensor) -> torch.Tensor:
        return self._run("segment", torch.from_numpy(pixels).to(self.dtype), conditional).float()

    def stack(self, rows: list) -> torch.Tensor:
        return torch.stack(rows)

    def _run(self, program: str, *inputs: torch.Tensor) -> torch.Tensor:
        self._ensure(program)
        with torch.jit.optimized_execution(False):  # the recorded kernels as recorded: no fusion, bit for bit
            return self._programs[program](*inputs)

    def _ensure(self, *programs: str) -> None:
        """Load ``programs``; trace the ones missing from the cache, or damaged there (saying so), first."""
        wanted = [name for name in programs if name not in self._programs]
        self._trace_missing(wanted)
        for name in wanted:
            try:
                self._programs[name] = _load(program_path(self.entry, name))
            except CacheDamaged as exc:
                self._trace([name], f"{exc}; tracing it again")
                self._programs[name] = _load(program_path(self.entry, name))

    def _trace_missing(self, programs: list[str]) -> bool:
        """Trace those of ``programs`` the cache lacks, in one load of the weights.

        Returns:
            True when something was traced.
        """
        missing = [name for name in programs if not program_path(self.entry, name).is_file()]
        if missing:
            self._trace(missing)
        return bool(missing)

    def _trace(self, programs: list[str], reason: str = "") -> None:
        """Trace ``programs`` from the checkpoint's weights into the cache (imports transformers), saying so (or
        ``reason``) in one line."""
        from clipseg_cli.backends.onnx_export import export_seconds

        prepare(self.entry, self.directory)
        if self.progress:
            seconds = export_seconds(self.directory, programs)
            line = reason or f"preparing the bf16 model for this CPU, once (about {seconds} s)"
            LOG.info(" ".join(line.split()))
        for name, data in trace_programs(self.directory, self.preprocessing.size, programs).items():
            path = program_path(self.entry, name)
            try:
                atomic_write(path, lambda handle, data=data: handle.write(data))
                seal_graph(path)
            except OSError as exc:
                raise unwritable(exc, path) from None


def trace_programs(directory: Path, size: tuple[int, int], programs: list[str]) -> dict[str, bytes]:
    """Trace the bf16 programs of a checkpoint folder at the model input ``size`` (height, width); each holds
    only the parts it runs (the segment program the image layers to the deepest one read).

    Image, prompt and token counts stay dynamic; the input size is fixed.

    Returns:
        {name: the serialised TorchScript program}, in the order of ``programs``.
    """
    from clipseg_cli.backends.onnx_export import SegmentGraph, TextGraph, VisualGraph
    from clipseg_cli.checkpoints.loading import load_directory
    from clipseg_cli.modeling import ClipSeg
    from clipseg_cli.modeling.fastpath import speed_up
    from clipseg_cli.modeling.towers import trim_vision_tower

    model = load_directory(directory, torch.float32)  # the scales fold in fp32, then the cast (as TorchRunner)
    speed_up(model, torch.device("cpu"), torch.bfloat16)
    config, (height, width) = model.config, size
    pixels = torch.zeros(2, 3, height, width, dtype=torch.bfloat16)
    ids = torch.ones(2, 5, dtype=torch.long)
    traced = {}
    for name in sorted(programs, key=("visual", "text", "segment").index):  # the image tower is trimmed last
        if name == "visual":
            module = VisualGraph(ClipSeg(config, model.vision, None, model.visual_projection, None, None))
            args = (pixels,)
        elif name == "text":
            module, args = TextGraph(ClipSeg(config, None, model.text, None, model.text_projection, None)), (ids, ids)
        else:
            trim_vision_tower(model.vision, max(config.extract_layers) + 1)
            module = SegmentGraph(ClipSeg(config, model.vision, None, None, None, model.decoder))
            args = (pixels, torch.zeros(3, config.projection_dim, dtype=torch.bfloat16))
        traced[name] = _serialise(module.eval(), args)
    return {name: traced[name] for name in programs}


def prepare_programs(directory: Path, progress: bool = True) -> bool:
    """Trace a checkpoint folder's bf16 programs (segment and text) into the cache unless there.

    Raises CacheUnwritable when the cache cannot take them.

    Returns:
        True when something was traced, False when the cache already held them.
    """
    directory = Path(directory)
    config, preprocessing = check_processing(directory)
    return TracedRunner(directory, config, preprocessing, progress)._trace_missing(["segment", "text"])


def _serialise(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on Python conditions (shapes here are consistent)
        torch.jit.save(torch.jit.trace(module, args, check_trace=False), buffer)
    return buffer.getvalue()


def _load(path: Path) -> torch.jit.ScriptModule:
    """A stored program, checked against its checksum first.

    Raises CacheDamaged when it fails the checksum or TorchScript cannot read it.
    """
    verify_graph(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notice
            return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:  # a file that passed its checksum but was written by a broken run
        raise CacheDamaged(f"the cached program {path} cannot be loaded ({type(exc).__name__})") from None
