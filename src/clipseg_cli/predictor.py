"""Segmenter: the model loaded once, prompts embedded once, numpy in and numpy out; the runtime picked at load."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from clipseg_cli import LOGGER
from clipseg_cli.checkpoints.loading import checkpoint_dir
from clipseg_cli.constants import DEFAULT_MAX_PIXELS, DEFAULT_MODEL
from clipseg_cli.errors import ClipSegError
from clipseg_cli.fingerprint import prompt_key
from clipseg_cli.imaging.decode import open_image
from clipseg_cli.imaging.preprocess import Preprocessing
from clipseg_cli.imaging.upsample import sigmoid_, upsample_bilinear
from clipseg_cli.imaging.visual_prompt import VisualPrompt, prepare_visual_prompt
from clipseg_cli.prompts import Average, Prompt
from clipseg_cli.runtime import Runtime, choose_runtime

if TYPE_CHECKING:
    from clipseg_cli.backends import Runner

LOG = logging.getLogger(LOGGER)

ImageInput = str | Path | Image.Image | np.ndarray


class Segmenter:
    """Runs a ClipSeg on images for any number of prompts, on the runtime `from_pretrained` picked.

    The image tower runs once per image whatever the number of prompts, and each prompt's
    embedding is computed once per Segmenter. The model runs in a runner of `backends`
    (`TorchRunner` or `OrtRunner`); embeddings and logits are its arrays (torch tensors or numpy).
    """

    def __init__(self, runner: Runner, preprocessing: Preprocessing) -> None:
        self.runner = runner
        self.preprocessing = preprocessing
        self._embeddings: dict[str, Any] = {}
        self._layers_dropped = False

    @property
    def backend(self) -> str:
        """Returns: torch or onnxruntime."""
        return self.runner.backend

    @property
    def precision(self) -> str:
        """Returns: fp32, bf16, fp16 or int8."""
        return self.runner.precision

    @property
    def device_type(self) -> str:
        """Returns: cpu, cuda or mps."""
        return self.runner.device_type

    @property
    def is_fp32(self) -> bool:
        """Whether this runs the fp32 class of computation (the reference's masks); False for bf16, fp16, int8."""
        return self.runner.precision == "fp32"

    @property
    def model(self):
        """The torch ClipSeg module (torch runner only)."""
        return self.runner.model

    @property
    def identity(self) -> dict[str, str]:
        """What makes this Segmenter's outputs besides the inputs: weights, precision and device type.

        Returns:
            {"weights": ..., "precision": e.g. "float32" (torch) or "float32-onnxruntime", "device": e.g. "cpu"}.
        """
        return self.runner.identity

    @classmethod
    def from_pretrained(
        cls,
        name: str | Path = DEFAULT_MODEL,
        *,
        device: str = "auto",
        precision: str = "auto",
        offline: bool | None = None,
        revision: str | None = None,
        progress: bool = True,
        backend: str = "auto",
    ) -> Segmenter:
        """Load a checkpoint (directory, hub id or alias) for inference.

        Arguments:
            device: auto, cpu, cuda or mps.
            precision: auto, fast, fp32, bf16, fp16 or int8; auto is the exact class (fp32) everywhere, fast
                the fastest precision of this hardware (`runtime.choose_runtime`).
            offline: never download (None: honour HF_HUB_OFFLINE).
            progress: show download bars.
            backend: auto, torch or onnxruntime (auto: see `runtime.choose_runtime`; bf16 on the CPU then runs the
                programs traced once per checkpoint, `backends.traced`; torch: transformers' modules, eagerly).

        Returns:
            A ready Segmenter.
        """
        runtime = choose_runtime(device, precision, backend)
        directory = checkpoint_dir(name, offline=offline, revision=revision, progress=progress)
        if runtime.backend == "onnxruntime":
            from clipseg_cli.backends.graph_cache import CacheUnwritable
            from clipseg_cli.backends.ort import OrtRunner

            try:
                return cls(*OrtRunner.load(directory, runtime.precision, progress))
            except CacheUnwritable as exc:
                if runtime.precision != "fp32" or backend == "onnxruntime":
                    raise
                LOG.warning("%s; running fp32 with torch instead", exc)
                runtime = Runtime("torch", runtime.device, "fp32")
        if runtime.precision == "bf16" and runtime.device == "cpu" and backend == "auto":
            from clipseg_cli.backends.graph_cache import CacheUnwritable
            from clipseg_cli.backends.traced import TracedRunner

            try:
                return cls(*TracedRunner.load(directory, progress))
            except CacheUnwritable as exc:
                LOG.warning("%s; running bf16 with transformers' modules instead", exc)
        from clipseg_cli.backends.pytorch import TorchRunner

        return cls(*TorchRunner.load(directory, runtime.device, runtime.precision))

    def embed(self, prompts: Sequence[Prompt]) -> Any:
        """Prompt embeddings, from the cache where this Segmenter has seen the prompt before.

        Returns:
            PxE embeddings (the runner's array type, dtype and device).
        """
        runner = self.runner
        if any(isinstance(prompt, Average) for prompt in prompts):
            return runner.stack([self.embed(p.parts).mean(0) if isinstance(p, Average) else self.embed([p])[0]
                                 for p in prompts])
        keys = [prompt_key(prompt) for prompt in prompts]
        new = {key: p for key, p in zip(keys, prompts, strict=True) if key not in self._embeddings}
        texts = {key: p for key, p in new.items() if isinstance(p, str)}
        images = {key: p for key, p in new.items() if not isinstance(p, str)}
        if (texts or images) and self._layers_dropped:
            raise ClipSegError("new prompts after drop_unused_layers(); embed every prompt before dropping them")
        if texts:
            self._embeddings.update(zip(texts, runner.embed_texts(list(texts.values())), strict=True))
        if images:
            pixels = np.stack([prepare_visual_prompt(p, self.preprocessing).numpy() if isinstance(p, VisualPrompt)
                               else self.preprocessing.to_array(open_image(p).image) for p in images.values()])
            self._embeddings.update(zip(images, runner.embed_images(pixels), strict=True))
        return runner.stack([self._embeddings[key] for key in keys])

    def drop_unused_layers(self) -> None:
        """Free what only new prompts would need (the text tower, image layers past the deepest one read).

        Only the prompts already embedded can be used afterwards.
        """
        self.runner.drop_unused()
        self._layers_dropped = True

    def logits(self, images: Sequence[Image.Image], prompts: Sequence[Prompt]) -> Any:
        """Mask logits at model resolution for every image and prompt.

        Arguments:
            images: B RGB images (any size; resized by the checkpoint's preprocessing).

        Returns:
            BxPxhxw float32 logits on the CPU (a torch tensor or a numpy array; `probabilities` takes both).
        """
        conditional = self.embed(prompts)
        return self.runner.logits(self.preprocessing.to_batch(images), conditional)

    def predict(self, image: ImageInput, prompts: Sequence[Prompt] | Prompt,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
        """Probabilities for each prompt at the image's own (upright) size.

        Returns:
            float32 array (n_prompts, height, width) in [0, 1].
        """
        prompts = [prompts] if isinstance(prompts, (str, Image.Image, VisualPrompt, Average)) else list(prompts)
        if not prompts:
            raise ClipSegError("give at least one prompt")
        decoded = open_image(image, max_pixels=max_pixels)
        return probabilities(self.logits([decoded.image], prompts)[0], decoded.size)


def upsample(logits: Any, size: tuple[int, int]) -> Any:
    """Upsample logits bilinearly to an image's size (what users of CLIPSeg do before the sigmoid).

    Torch tensors through torch (the reference computation), numpy arrays through numpy (equal to float rounding).

    Arguments:
        logits: Pxhxw float32.
        size: (width, height) of the image.

    Returns:
        PxHxW float32 logits, of the input's type.
    """
    if isinstance(logits, np.ndarray):
        return upsample_bilinear(logits, size)
    import torch.nn.functional as F

    width, height = size
    return F.interpolate(logits[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]


def probabilities(logits: Any, size: tuple[int, int]) -> np.ndarray:
    """Upsample logits to an image's size, then take the sigmoid.

    Returns:
        float32 array PxHxW in [0, 1].
    """
    if isinstance(logits, np.ndarray):
        return sigmoid_(upsample_bilinear(logits, size))
    return upsample(logits, size).sigmoid_().numpy()


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load, and how: `Segmenter.from_pretrained`'s arguments as one value (``--weights``,
    ``--device``, ``--precision``, ``--offline``, ``--revision``), sent as it is to Ray's actors.

    name: a checkpoint folder, hub id or alias.
    device: auto, cpu, cuda or mps.
    precision: auto, fp32, bf16, fp16 or int8.
    offline: never download (None: honour HF_HUB_OFFLINE).
    revision: the hub revision.
    """

    name: str | Path = DEFAULT_MODEL
    device: str = "auto"
    precision: str = "auto"
    offline: bool | None = None
    revision: str | None = None

    def expected_identity(self, *, progress: bool = True) -> tuple[dict[str, str], bool, tuple[int, int]]:
        """What the loaded Segmenter would record in fingerprints, found without building the model (the
        weights' digest is memoised, see `clipseg_cli.fingerprint.content_sha256`).

        Arguments:
            progress: show download bars.

        Returns:
            (its `Segmenter.identity`, whether it runs fp32, its input size (height, width)).
        """
        from clipseg_cli.checkpoints.loading import check_processing
        from clipseg_cli.fingerprint import checkpoint_digest
        from clipseg_cli.runtime import TORCH_DTYPES

        runtime = choose_runtime(self.device, self.precision)
        directory = checkpoint_dir(self.name, offline=self.offline, revision=self.revision, progress=progress)
        _, preprocessing = check_processing(directory)
        precision = TORCH_DTYPES.get(runtime.precision, runtime.precision)
        if runtime.backend == "onnxruntime":
            precision += "-onnxruntime"
        identity = {"weights": checkpoint_digest(directory), "precision": precision, "device": runtime.device}
        return identity, runtime.precision == "fp32", preprocessing.size

    def load(self, *, progress: bool = True) -> Segmenter:
        """Returns: the Segmenter (see `Segmenter.from_pretrained`); progress: show download bars."""
        return Segmenter.from_pretrained(self.name, device=self.device, precision=self.precision,
                                         offline=self.offline, revision=self.revision, progress=progress)
