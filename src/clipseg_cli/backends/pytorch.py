"""The model on torch: the reference computation in fp32, bf16 and fp16 rewrites, GPUs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from clipseg_cli.checkpoints.loading import load_directory, load_processing
from clipseg_cli.fingerprint import checkpoint_digest
from clipseg_cli.imaging.preprocess import Preprocessing
from clipseg_cli.modeling import ClipSeg
from clipseg_cli.modeling.towers import trim_vision_tower
from clipseg_cli.runtime import resolve_device, torch_dtype


class TorchRunner:
    """Our ClipSeg module on a torch device (a `backends.Runner`)."""

    backend = "torch"

    def __init__(self, model: ClipSeg, tokenizer, device: torch.device) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.device_type = device.type
        self.dtype = next(model.decoder.parameters()).dtype
        self.precision = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]
        self.max_text_tokens = model.config.text["max_position_embeddings"]

    @property
    def identity(self) -> dict[str, str]:
        weights = getattr(self.model, "checkpoint_digest", None) or f"in-memory model {id(self.model):x}"
        return {"weights": weights, "precision": str(self.dtype).removeprefix("torch."), "device": self.device.type}

    @classmethod
    def load(cls, directory: Path, device: str, precision: str) -> tuple[TorchRunner, Preprocessing]:
        """Load a checkpoint folder on ``device`` (cpu, cuda, mps) in ``precision`` (fp32, bf16, fp16).

        Returns:
            (the runner, the checkpoint's preprocessing).
        """
        torch_device = resolve_device(device)
        dtype = torch_dtype(precision)
        preprocessing, tokenizer = load_processing(directory)  # before the weights: fail fast
        model = load_directory(directory, torch.float32)  # fast precisions fold scales in fp32, then cast
        model.checkpoint_digest = checkpoint_digest(directory)  # read by identity
        if dtype != torch.float32:  # fp32 stays the reference computation, bit for bit
            from clipseg_cli.modeling.fastpath import speed_up

            speed_up(model, torch_device, dtype)
        elif torch_device.type == "cuda":  # the exact class: TF32 would round products to 10 bits
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        model = model.to(torch_device)
        return cls(model, tokenizer, torch_device), preprocessing

    def drop_unused(self) -> None:
        """Free the text tower and the image layers past the deepest extracted one."""
        self.model.text = None
        trim_vision_tower(self.model.vision, max(self.model.config.extract_layers) + 1)

    @torch.inference_mode()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_text_tokens,
                                return_tensors="pt").to(self.device)
        return self.model.embed_text(tokens["input_ids"], tokens["attention_mask"])

    @torch.inference_mode()
    def embed_images(self, pixels: np.ndarray) -> torch.Tensor:
        return self.model.embed_image(self._to_model(pixels))

    @torch.inference_mode()
    def logits(self, pixels: np.ndarray, conditional: torch.Tensor) -> torch.Tensor:
        activations = self.model.encode_image(self._to_model(pixels))
        batch = pixels.shape[0]
        logits = self.model.decode(activations, conditional.repeat(batch, 1), tuple(pixels.shape[-2:]))
        return logits.float().cpu().view(batch, conditional.shape[0], *logits.shape[-2:])

    def stack(self, rows: list) -> torch.Tensor:
        return torch.stack(rows)

    def _to_model(self, pixels: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(pixels).to(self.device, self.dtype)
