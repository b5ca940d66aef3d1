"""Model input preparation, exactly as the checkpoint's image processor (transformers' ViTImageProcessor) does it."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from clipseg_cli.constants import (
    IMAGE_MEAN,
    IMAGE_STD,
    MAX_MODEL_INPUT_SIZE,
    MODEL_INPUT_SIZE,
    PREPROCESSOR_FILE,
    PROCESSOR_FILE,
)
from clipseg_cli.errors import CheckpointError
from clipseg_cli.modeling.config import read_checkpoint_json

if TYPE_CHECKING:
    import torch

Fail = Callable[[str], CheckpointError]  # makes the error for a bad setting, naming its file

# What ViTImageProcessor uses for a key the checkpoint leaves out (transformers does the same).
VIT_DEFAULTS: dict[str, Any] = {
    "do_resize": True,
    "size": {"height": 224, "width": 224},
    "resample": Image.Resampling.BILINEAR,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}
IMAGE_PROCESSORS = ("ViTImageProcessor", "ViTImageProcessorFast", "ViTImageProcessorPil")
RESAMPLE_NAMES = {int(f): f.name.lower() for f in sorted(Image.Resampling)}  # 0 nearest, 1 lanczos, 2 bilinear, ...


@dataclass(frozen=True)
class Preprocessing:
    """Resize (ignoring aspect ratio), rescale to [0, 1], normalise per channel."""

    size: tuple[int, int] = (MODEL_INPUT_SIZE, MODEL_INPUT_SIZE)  # (height, width)
    mean: tuple[float, float, float] = IMAGE_MEAN
    std: tuple[float, float, float] = IMAGE_STD
    resample: int = Image.Resampling.BILINEAR
    rescale: float = 1 / 255

    @classmethod
    def from_checkpoint(cls, directory: Path) -> Preprocessing:
        """Read a checkpoint's preprocessing: preprocessor_config.json and/or processor_config.json.

        The published checkpoints have preprocessor_config.json; today's ``save_pretrained`` nests the
        same settings under ``image_processor`` in processor_config.json. Where both are present they
        must agree. Raises CheckpointError naming the files looked for when there is neither.

        Returns:
            The preprocessing the checkpoint was made with.
        """
        found = [cls.from_dict(settings, path) for path, settings in _settings(directory)]
        if not found:
            raise CheckpointError(
                directory, f"no preprocessing: looked for {PREPROCESSOR_FILE} and for an image_processor in "
                f"{PROCESSOR_FILE}; copy the checkpoint's {PREPROCESSOR_FILE} beside its weights",
            )
        if len(set(found)) > 1:
            raise CheckpointError(directory, f"{PREPROCESSOR_FILE} and {PROCESSOR_FILE} describe different "
                                  "preprocessing; delete the one that is wrong")
        return found[0]

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str | Path) -> Preprocessing:
        """Check and read the settings of a ViTImageProcessor; keys left out take its defaults.

        Returns:
            The preprocessing; raises CheckpointError naming ``source`` for a setting we cannot honour.
        """

        def fail(reason: str) -> CheckpointError:
            return CheckpointError(source, reason)

        kind = raw.get("image_processor_type", IMAGE_PROCESSORS[0])
        if kind not in IMAGE_PROCESSORS:
            raise fail(f"image_processor_type {kind!r} is not supported; CLIPSeg checkpoints use ViTImageProcessor")
        settings = {**VIT_DEFAULTS, **raw}
        for key in ("do_resize", "do_rescale", "do_normalize"):
            if not isinstance(settings[key], bool):
                raise fail(f"{key} must be true or false, got {settings[key]!r}")
        if not settings["do_resize"]:
            raise fail("do_resize false is not supported: every image must be resized to one model input size")
        resample = settings["resample"]
        if not _is_int(resample) or resample not in RESAMPLE_NAMES:
            choices = ", ".join(f"{number} ({name})" for number, name in RESAMPLE_NAMES.items())
            raise fail(f"resample {resample!r} is not one of {choices}")
        size = _size(settings["size"], fail)
        rescale = 1.0  # do_rescale false
        if settings["do_rescale"]:
            rescale = _positive_number(settings["rescale_factor"], "rescale_factor", fail)
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # do_normalize false
        if settings["do_normalize"]:
            mean = _channels(settings["image_mean"], "image_mean", fail)
            std = _channels(settings["image_std"], "image_std", fail, positive=True)
        return cls(size, mean, std, int(resample), rescale)

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

    def to_batch(self, images: Sequence[Image.Image]) -> np.ndarray:
        """A batch of RGB images as the model's input.

        Returns:
            Bx3xHxW float32 array.
        """
        return np.stack([self.to_array(image) for image in images])

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """A batch of RGB images as the model's input, for torch.

        Returns:
            Bx3xHxW float32 tensor.
        """
        import torch

        return torch.from_numpy(self.to_batch(images))


def _settings(directory: Path) -> list[tuple[Path, dict[str, Any]]]:
    """(file, image processor settings) for each preprocessing file the checkpoint has."""
    found = []
    for name, key in ((PREPROCESSOR_FILE, None), (PROCESSOR_FILE, "image_processor")):
        path = directory / name
        if not path.is_file():
            continue
        raw = read_checkpoint_json(path)
        if key is not None:
            if not isinstance(raw, dict) or key not in raw:
                continue  # a processor_config.json of the old layout holds no image settings
            raw = raw[key]
        if not isinstance(raw, dict):
            raise CheckpointError(path, f"{key or 'the file'} is not a JSON object")
        found.append((path, raw))
    return found


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _size(value: object, fail: Fail) -> tuple[int, int]:
    """(height, width) from ``size``: one number, or {"height", "width"}, each 1..MAX_MODEL_INPUT_SIZE."""
    if _is_int(value):
        value = {"height": value, "width": value}
    if not isinstance(value, dict) or set(value) - {"height", "width"} or len(value) != 2:
        raise fail(f"size {value!r} is not supported: give {{\"height\": H, \"width\": W}} (a fixed input size)")
    for side in ("height", "width"):
        if not _is_int(value[side]) or not 1 <= value[side] <= MAX_MODEL_INPUT_SIZE:
            raise fail(f"size {side} {value[side]!r} must be a whole number from 1 to {MAX_MODEL_INPUT_SIZE} "
                       "(larger inputs need gigabytes of memory)")
    return value["height"], value["width"]


def _positive_number(value: object, name: str, fail: Fail) -> float:
    if not _is_number(value) or value <= 0:
        raise fail(f"{name} must be a positive number, got {value!r}")
    return float(value)


def _channels(value: object, name: str, fail: Fail, positive: bool = False) -> tuple[float, float, float]:
    """A per-channel statistic: one number for all channels, or three."""
    values = [value] * 3 if _is_number(value) else value
    if not isinstance(values, list) or len(values) != 3 or not all(_is_number(v) for v in values):
        raise fail(f"{name} must be three numbers (one per RGB channel), got {value!r}")
    if positive and min(values) <= 0:
        raise fail(f"{name} must be positive, got {value!r}")
    return tuple(float(v) for v in values)
