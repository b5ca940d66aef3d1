"""The frozen CLIP towers, built from transformers' CLIP classes, and partial runs of them."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

from clipseg_cli.modeling.config import ClipSegConfig


def build_vision_tower(config: ClipSegConfig) -> CLIPVisionModel:
    """CLIP's image tower (ViT) with the checkpoint's sizes.

    Returns:
        An uninitialised-for-use ``CLIPVisionModel``; weights come from the checkpoint.
    """
    return CLIPVisionModel(CLIPVisionConfig(**config.vision, attn_implementation="sdpa"))


def build_text_tower(config: ClipSegConfig) -> CLIPTextModel:
    """CLIP's text tower (causal transformer) with the checkpoint's sizes.

    Returns:
        A ``CLIPTextModel``; weights come from the checkpoint.
    """
    return CLIPTextModel(CLIPTextConfig(**config.text, attn_implementation="sdpa"))


def vision_activations(
    tower: CLIPVisionModel, pixel_values: torch.Tensor, layers: Sequence[int]
) -> list[torch.Tensor]:
    """Run the image tower only as deep as the deepest requested layer.

    Arguments:
        pixel_values: Bx3xHxW normalised images.
        layers: 0-based encoder layer indices whose outputs are wanted.

    Returns:
        One BxLxC tensor per entry of ``layers`` (L = 1 + (H/patch)*(W/patch)), in that order.
    """
    hidden = tower.embeddings(pixel_values, interpolate_pos_encoding=True)
    hidden = tower.pre_layrnorm(hidden)
    wanted = {index: None for index in layers}
    for index, layer in enumerate(tower.encoder.layers[: max(layers) + 1]):
        hidden = layer(hidden, None)
        if isinstance(hidden, tuple):  # older transformers return (hidden,)
            hidden = hidden[0]
        if index in wanted:
            wanted[index] = hidden
    return [wanted[index] for index in layers]


def trim_vision_tower(tower: CLIPVisionModel, depth: int) -> None:
    """Drop the encoder layers from ``depth`` on and the final layer norm, to save memory.

    After this the tower can still give activations of layers below ``depth``, but no
    pooled output: image prompts must be embedded before trimming.
    """
    tower.encoder.layers = nn.ModuleList(list(tower.encoder.layers[:depth]))
    tower.post_layernorm = nn.Identity()
