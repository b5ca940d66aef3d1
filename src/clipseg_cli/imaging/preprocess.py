"""Model input preparation, following a checkpoint's preprocessor_config.json."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipseg_cli.constants import IMAGE_MEAN, IMAGE_STD, MODEL_INPUT_SIZE
from clipseg_cli.errors import CheckpointError


@dataclass(frozen=True)
class Preprocessing:
    """Resize (ignoring aspect ratio), rescale to [0, 1], normalise per channel."""

    size: tuple[int, int] = (MODEL_INPUT_SIZE, MODEL_INPUT_SIZE)  # (height, width)
    mean: tuple[float, float, float] = IMAGE_MEAN
    std: tuple[float, float, float] = IMAGE_STD
    resample: int = Image.Resampling.BILINEAR
    rescale: float = 1 / 255

    @classmethod
    def from_file(cls, path: Path) -> Preprocessing:
        """Read a preprocessor_config.json; a missing file means the published defaults.

        Returns:
            The preprocessing the checkpoint was trained with.
        """
        if not path.is_file():
            return cls()
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            size = raw.get("size", {"height": MODEL_INPUT_SIZE, "width": MODEL_INPUT_SIZE})
            if isinstance(size, int):
                size = {"height": size, "width": size}
            return cls(
                size=(int(size["height"]), int(size["width"])),
                mean=tuple(float(v) for v in raw.get("image_mean", IMAGE_MEAN)),
                std=tuple(float(v) for v in raw.get("image_std", IMAGE_STD)),
                resample=int(raw.get("resample", Image.Resampling.BILINEAR)),
                rescale=float(raw.get("rescale_factor", 1 / 255)),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(path, f"unreadable preprocessor config ({exc})") from None

    def resize(self, image: Image.Image) -> Image.Image:
        """Resize an RGB image to the model's input size.

        Returns:
            An RGB image of ``size``.
        """
        height, width = self.size
        if image.size == (width, height):
            return image
        return image.resize((width, height), resample=self.resample)

    def to_array(self, image: Image.Image) -> np.ndarray:
        """One image as the model's input.

        Returns:
            3xHxW float32 array, normalised.
        """
        pixels = np.asarray(self.resize(image), dtype=np.float32) * np.float32(self.rescale)
        pixels = (pixels - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return pixels.transpose(2, 0, 1)

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """A batch of RGB images as the model's input.

        Returns:
            Bx3xHxW float32 tensor.
        """
        return torch.from_numpy(np.stack([self.to_array(image) for image in images]))
