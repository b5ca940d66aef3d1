"""Segmenter: the model loaded once, prompts embedded once, numpy in and numpy out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from clipseg_cli.checkpoints.loading import checkpoint_dir, load_directory, load_processing
from clipseg_cli.constants import DEFAULT_MAX_PIXELS, DEFAULT_MODEL
from clipseg_cli.errors import ClipSegError
from clipseg_cli.fingerprint import checkpoint_identity, prompt_key
from clipseg_cli.imaging.decode import open_image
from clipseg_cli.imaging.preprocess import Preprocessing
from clipseg_cli.imaging.visual_prompt import VisualPrompt, prepare_visual_prompt
from clipseg_cli.modeling import ClipSeg
from clipseg_cli.modeling.towers import trim_vision_tower
from clipseg_cli.prompts import Average, Prompt
from clipseg_cli.runtime import resolve_device, resolve_precision

ImageInput = str | Path | Image.Image | np.ndarray


class Segmenter:
    """Runs a ClipSeg on images for any number of prompts.

    The image tower runs once per image whatever the number of prompts, and each prompt's
    embedding is computed once per Segmenter.
    """

    def __init__(self, model: ClipSeg, tokenizer, preprocessing: Preprocessing, device: torch.device) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.preprocessing = preprocessing
        self.device = device
        self.dtype = next(model.decoder.parameters()).dtype
        self.max_text_tokens = model.config.text["max_position_embeddings"]
        self._embeddings: dict[str, torch.Tensor] = {}
        self._trimmed = False

    @property
    def identity(self) -> dict[str, str]:
        """What makes this Segmenter's outputs besides the inputs: weights, precision and device type.

        A model not loaded by `from_pretrained` is named by its object id (never equal across runs).

        Returns:
            {"weights": ..., "precision": e.g. "float32", "device": e.g. "cpu"}.
        """
        weights = getattr(self.model, "checkpoint_identity", None) or f"in-memory model {id(self.model):x}"
        return {"weights": weights, "precision": str(self.dtype).removeprefix("torch."), "device": self.device.type}

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
    ) -> Segmenter:
        """Load a checkpoint (directory, hub id or alias) for inference.

        Arguments:
            device: auto, cpu, cuda or mps. precision: auto, fp32, bf16 or fp16; auto picks fp16
                on GPUs, bf16 on CPUs with native bf16 matrix units, fp32 otherwise.
            offline: never download (None: honour HF_HUB_OFFLINE). progress: show download bars.

        Returns:
            A ready Segmenter.
        """
        torch_device = resolve_device(device)
        dtype = resolve_precision(precision, torch_device)
        directory = checkpoint_dir(name, offline=offline, revision=revision, progress=progress)
        preprocessing, tokenizer = load_processing(directory)  # before the weights: fail fast
        model = load_directory(directory, torch.float32)  # fast precisions fold scales in fp32, then cast
        model.checkpoint_identity = checkpoint_identity(directory)  # read by Segmenter.identity
        if dtype != torch.float32:  # fp32 stays the reference computation, bit for bit
            from clipseg_cli.modeling.fastpath import speed_up

            speed_up(model, torch_device, dtype)
        model = model.to(torch_device)
        return cls(model, tokenizer, preprocessing, torch_device)

    @torch.inference_mode()
    def embed(self, prompts: Sequence[Prompt]) -> torch.Tensor:
        """Prompt embeddings, from the cache where this Segmenter has seen the prompt before.

        Returns:
            PxE tensor on the model's device and dtype.
        """
        if any(isinstance(prompt, Average) for prompt in prompts):
            return torch.stack([self.embed(p.parts).mean(0) if isinstance(p, Average) else self.embed([p])[0]
                                for p in prompts])
        keys = [prompt_key(prompt) for prompt in prompts]
        new = {key: p for key, p in zip(keys, prompts, strict=True) if key not in self._embeddings}
        texts = {key: p for key, p in new.items() if isinstance(p, str)}
        images = {key: p for key, p in new.items() if not isinstance(p, str)}
        if (texts or images) and self._trimmed:
            raise ClipSegError("new prompts after drop_unused_layers(); embed every prompt before trimming")
        if texts:
            tokens = self.tokenizer(list(texts.values()), padding=True, truncation=True,
                                    max_length=self.max_text_tokens, return_tensors="pt").to(self.device)
            embedded = self.model.embed_text(tokens["input_ids"], tokens["attention_mask"])
            self._embeddings.update(zip(texts, embedded, strict=True))
        if images:
            pixels = torch.stack([prepare_visual_prompt(p, self.preprocessing) if isinstance(p, VisualPrompt)
                                  else self.preprocessing([open_image(p).image])[0] for p in images.values()])
            self._embeddings.update(zip(images, self.model.embed_image(self._to_model(pixels)), strict=True))
        return torch.stack([self._embeddings[key] for key in keys])

    def drop_unused_layers(self) -> None:
        """Free the text tower and the image layers past the deepest extracted one.

        Only the prompts already embedded can be used afterwards.
        """
        self.model.text = None
        trim_vision_tower(self.model.vision, max(self.model.config.extract_layers) + 1)
        self._trimmed = True

    @torch.inference_mode()
    def logits(self, images: Sequence[Image.Image], prompts: Sequence[Prompt]) -> torch.Tensor:
        """Mask logits at model resolution for every image and prompt.

        Arguments:
            images: B RGB images (any size; resized by the checkpoint's preprocessing).

        Returns:
            BxPxhxw float32 logits on the CPU.
        """
        conditional = self.embed(prompts)
        pixels = self._to_model(self.preprocessing(images))
        activations = self.model.encode_image(pixels)
        batch = len(images)
        logits = self.model.decode(activations, conditional.repeat(batch, 1), self.preprocessing.size)
        return logits.float().cpu().view(batch, len(prompts), *logits.shape[-2:])

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

    def _to_model(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.to(self.device, self.dtype)


def upsample(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Upsample logits bilinearly to an image's size (what users of CLIPSeg do before the sigmoid).

    Arguments:
        logits: Pxhxw float32. size: (width, height) of the image.

    Returns:
        PxHxW float32 logits.
    """
    width, height = size
    return F.interpolate(logits[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]


def probabilities(logits: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Upsample logits to an image's size, then take the sigmoid.

    Returns:
        float32 array PxHxW in [0, 1].
    """
    return torch.sigmoid_(upsample(logits, size)).numpy()
