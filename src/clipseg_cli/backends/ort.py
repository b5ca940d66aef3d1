"""The model on ONNX Runtime: graphs exported from the checkpoint once, then no torch at all.

With the graphs in the cache, loading reads only the checkpoint's small files (config,
preprocessing, tokenizer) and the graphs: neither torch nor transformers is imported. The first
run exports them (torch, about 11 s for the published size on a quiet 2-core EPYC; `prepare_graphs` does
it ahead) into the cache (`backends.cache`), each graph stored whole as soon as it is exported (ONNX
Runtime optimises and stores one while the next one traces), so that a killed export resumes with the
graphs it had not stored. The stored graphs hold nothing specific to an instruction set: one export serves
every CPU kind that shares the cache.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path

import numpy as np

from clipseg_cli import LOGGER
from clipseg_cli.backends.graph_cache import (
    CacheUnwritable,
    entry_dir,
    graph_path,
    load_embedding,
    prepare,
    seal_graph,
    store_embedding,
    unwritable,
    use,
    verify_graph,
)
from clipseg_cli.backends.tokenizer import ClipTokenizer
from clipseg_cli.cachedir import CACHE_ENV
from clipseg_cli.checkpoints.loading import check_processing
from clipseg_cli.fingerprint import checkpoint_digest
from clipseg_cli.imaging.preprocess import Preprocessing
from clipseg_cli.modeling.config import ClipSegConfig

LOG = logging.getLogger(LOGGER)

PRECISIONS = ("fp32", "int8")  # int8: dynamic quantization of the segment graph; the prompt towers stay fp32


class OrtRunner:
    """Exported graphs run by ONNX Runtime on the CPU (a `backends.Runner`)."""

    backend = "onnxruntime"
    device_type = "cpu"

    def __init__(self, directory: Path, precision: str, config: ClipSegConfig, preprocessing: Preprocessing,
                 progress: bool = True) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"ONNX Runtime runs {' or '.join(PRECISIONS)}, not {precision}")
        self.directory = directory
        self.precision = precision
        self.config = config
        self.preprocessing = preprocessing
        self.progress = progress
        self.entry = entry_dir(directory)
        self.lock = use(self.entry)  # no other run's cleanup removes the entry while this runner lives
        self.weights = checkpoint_digest(directory)
        self.tokenizer: ClipTokenizer  # built by `load` while the segment session opens
        self._sessions: dict[str, object] = {}
        self._opening: dict[str, Future] = {}  # sessions being opened in the background
        self._unstored: dict[str, bytes] = {}  # graphs exported and not (yet) in the cache: kept to run from memory
        if not progress:  # -q: nothing on stderr but errors, ONNX Runtime's own logger included
            import onnxruntime

            onnxruntime.set_default_logger_severity(4)

    @classmethod
    def load(cls, directory: Path, precision: str = "fp32", progress: bool = True) -> tuple[OrtRunner, Preprocessing]:
        """Open a checkpoint folder's graphs, exporting them first when the cache has none for it.

        Raises CacheUnwritable when they must be exported and cannot be stored.

        Returns:
            (the runner, the checkpoint's preprocessing).
        """
        config, preprocessing = check_processing(directory)
        runner = cls(directory, precision, config, preprocessing, progress)
        if runner._file("segment").is_file():  # opening while the tokenizer is built
            runner._open_in_background("segment")
        runner.tokenizer = ClipTokenizer(directory, config.text["max_position_embeddings"], config.text["vocab_size"])
        runner._export_missing(["segment", "text"])  # both at once: one load of the weights
        if "segment" not in runner._opening:  # the text graph opens only for a prompt not embedded before
            runner._open_in_background("segment")
        return runner, preprocessing

    @property
    def identity(self) -> dict[str, str]:
        precision = {"fp32": "float32", "int8": "int8"}[self.precision]
        return {"weights": self.weights, "precision": f"{precision}-onnxruntime", "device": "cpu"}

    def drop_unused(self) -> None:
        """Close the sessions of the prompt graphs."""
        self._sessions.pop("text", None)
        self._sessions.pop("visual", None)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Each text alone (no padding, so a stored embedding equals a fresh one bit for bit), from the
        cache entry's stored embeddings where this checkpoint embedded the same tokens before."""
        rows = []
        for text in texts:
            ids, mask = self.tokenizer([text])
            row = load_embedding(self.entry, ids[0], self.config.projection_dim, self._note)
            if row is None:
                row = self._run("text", input_ids=ids, attention_mask=mask)[0]
                store_embedding(self.entry, ids[0], row)
            rows.append(row)
        return np.stack(rows)

    def embed_images(self, pixels: np.ndarray) -> np.ndarray:
        return self._run("visual", pixel_values=pixels)

    def logits(self, pixels: np.ndarray, conditional: np.ndarray) -> np.ndarray:
        return self._run("segment", pixel_values=pixels, conditional=np.ascontiguousarray(conditional, np.float32))

    def stack(self, rows: list) -> np.ndarray:
        return np.stack(rows)

    def _run(self, graph: str, **inputs: np.ndarray) -> np.ndarray:
        self._ensure(graph)
        return self._sessions[graph].run(None, inputs)[0]

    def _file(self, graph: str) -> Path:
        return graph_path(self.entry, graph, self.precision if graph == "segment" else "fp32")

    def _open(self, graph: str):
        """Returns: a session on a stored graph (or one the cache could not take, from memory); only the segment
        graph, run on every image, prepacks its weights."""
        if graph in self._unstored and not self._file(graph).is_file():  # a file that is there was stored since
            return _session(self._unstored[graph], prepack=graph == "segment")
        return _session(self._file(graph), prepack=graph == "segment")

    def _open_in_background(self, graph: str) -> None:
        """Start opening a stored graph's session in a thread, so that embedding a new prompt (text session,
        text graph) and decoding the image overlap it on a second core; `_ensure` waits for it."""
        opener = ThreadPoolExecutor(1, thread_name_prefix="clipseg-ort-open")
        self._opening[graph] = opener.submit(self._open, graph)
        opener.shutdown(wait=False)  # its thread ends once the session is open

    def _ensure(self, *graphs: str) -> None:
        """Open the sessions of ``graphs``; export the ones missing from the cache, or unreadable there, first."""
        wanted = [graph for graph in graphs if graph not in self._sessions]
        missing = [graph for graph in wanted if graph not in self._opening and not self._file(graph).is_file()]
        if missing:
            try:
                self._export(missing)
            except CacheUnwritable as exc:  # a graph needed mid-run (a --prompt-image's): it runs from memory
                LOG.warning("%s; running it from memory, as exported, this time", exc)
                self._export([graph for graph in missing if graph not in self._unstored], store=False)
        for graph in wanted:
            opening = self._opening.pop(graph, None)
            try:
                self._sessions[graph] = opening.result() if opening else self._open(graph)
            except Exception as exc:  # a damaged cache file: export it again, once
                opening = None  # its error's traceback holds this frame: no cycle keeps the runner (and lock) alive
                self._export([graph], f"{exc}; exporting it again")
                try:
                    self._sessions[graph] = self._open(graph)
                except Exception as again:  # written again and still unreadable: the cache's disk cuts files short
                    with suppress(OSError):
                        self._file(graph).unlink()
                    LOG.warning("cannot read back the graph written to %s, the disk may be full (%s); running it from "
                                "memory, as exported, this time (set %s to a folder with room)", self._file(graph),
                                " ".join(str(again).split())[:160], CACHE_ENV)
                    self._export([graph], store=False)
                    self._sessions[graph] = self._open(graph)

    def _note(self, message: str) -> None:
        if self.progress:
            LOG.info(" ".join(message.split()))

    def _export_missing(self, graphs: list[str]) -> bool:
        """Export those of ``graphs`` the cache lacks, in one load of the weights.

        Returns:
            True when something was exported.
        """
        missing = [graph for graph in graphs if not self._file(graph).is_file()]
        if missing:
            self._export(missing)
        return bool(missing)

    def _export(self, graphs: list[str], reason: str = "", store: bool = True) -> None:
        """Export ``graphs`` from the checkpoint's fp32 weights into the cache (imports torch), saying so (or
        ``reason``) in one line; with ``store`` False only into memory (`_unstored`)."""
        from clipseg_cli.backends.onnx_export import export_graph, export_seconds, quantize_int8
        from clipseg_cli.checkpoints.loading import load_directory

        if store:
            prepare(self.entry, self.directory)
        seconds = export_seconds(self.directory, graphs)
        what = "the int8 model" if self.precision == "int8" else "the model"
        if store:
            self._note(reason or f"preparing {what} for this CPU, once (about {seconds} s)")
        model = load_directory(self.directory)
        storing: Future | None = None
        with ThreadPoolExecutor(1, thread_name_prefix="clipseg-store") as storer:  # leaving it waits for a store begun
            for graph in graphs:
                data = export_graph(model, graph, self.preprocessing.size)
                if graph == "segment" and self.precision == "int8":
                    data = quantize_int8(data)
                self._unstored[graph] = data  # until the cache holds it
                if not store:
                    continue
                if storing is not None:
                    storing.result()
                storing = storer.submit(self._store, graph, data)  # ONNX Runtime's work while the next graph traces
            if storing is not None:
                storing.result()

    def _store(self, graph: str, data: bytes) -> None:
        """Optimise one exported graph and store it whole in the cache, with its checksums.

        Raises CacheUnwritable when the cache cannot take it.
        """
        from clipseg_cli.backends.optimize import store_optimized

        try:
            store_optimized(self._file(graph), data)
            seal_graph(self._file(graph))
        except OSError as exc:
            raise unwritable(exc, self._file(graph)) from None
        self._unstored.pop(graph, None)


def prepare_graphs(directory: Path, progress: bool = True, precision: str = "fp32") -> bool:
    """Export a checkpoint folder's graphs at ``precision`` (fp32: the exact class; int8: its quantized segment
    graph, beside the fp32 text graph both share) into the cache unless there.

    Raises CacheUnwritable when the cache cannot take them.

    Returns:
        True when something was exported, False when the cache already held them.
    """
    directory = Path(directory)
    config, preprocessing = check_processing(directory)
    return OrtRunner(directory, precision, config, preprocessing, progress)._export_missing(["segment", "text"])


def _session(path: Path | bytes, prepack: bool = True):
    """An ONNX Runtime CPU session whose idle workers sleep (the decode and write threads need the cores).

    Arguments:
        path: the stored graph.
        prepack: let ONNX Runtime repack the weights for its matrix kernels when the session opens. That pays
            for the segment graph, run on every image; the prompt graphs run once per new prompt, on a few
            tokens, so they skip it: the text graph then opens in 0.03 s instead of 0.17 s (published size,
            2-core EPYC); its sums run in another order, so its embeddings differ from a prepacked session's
            in the last bits (at most 4e-6 there), as the exact class's runtimes differ from each other.

    Returns:
        The ``onnxruntime.InferenceSession``.
    """
    import onnxruntime

    if not isinstance(path, bytes):
        verify_graph(path)  # before ONNX Runtime reads it: a damaged file is exported again, not half-read
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 4  # fatal only: a damaged graph is reported in our own one line
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    source = path if isinstance(path, bytes) else str(path)  # bytes: a graph the cache could not take
    return onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])
