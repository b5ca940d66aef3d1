"""ClipSeg: CLIP's frozen towers plus our decoder; the parts arrive already built.

Loading a checkpoint into it is `clipseg_cli.checkpoints.loading.load_model`'s job (the model never imports its loader).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPTextModel, CLIPVisionModel

from clipseg_cli.modeling.config import ClipSegConfig
from clipseg_cli.modeling.decoder import Decoder
from clipseg_cli.modeling.towers import build_text_tower, build_vision_tower, vision_activations


class ClipSeg(nn.Module):
    """Text- or image-prompted segmentation (Lüddecke & Ecker, CVPR 2022)."""

    def __init__(
        self,
        config: ClipSegConfig,
        vision: CLIPVisionModel,
        text: CLIPTextModel,
        visual_projection: nn.Linear,
        text_projection: nn.Linear,
        decoder: Decoder,
    ) -> None:
        super().__init__()
        self.config = config
        self.vision = vision
        self.text = text
        self.visual_projection = visual_projection
        self.text_projection = text_projection
        self.decoder = decoder

    @classmethod
    def build(cls, config: ClipSegConfig) -> ClipSeg:
        """Assemble a model with the sizes of ``config`` (weights uninitialised).

        Returns:
            A ClipSeg whose parameters must then be filled from a checkpoint.
        """
        vision_dim, text_dim = config.vision["hidden_size"], config.text["hidden_size"]
        return cls(
            config,
            vision=build_vision_tower(config),
            text=build_text_tower(config),
            visual_projection=nn.Linear(vision_dim, config.projection_dim, bias=False),
            text_projection=nn.Linear(text_dim, config.projection_dim, bias=False),
            decoder=Decoder(config),
        )

    def encode_image(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """Backbone activations that the decoder reads, stopping at the deepest one.

        Arguments:
            pixel_values: Bx3xHxW normalised images.

        Returns:
            One BxLxC tensor per ``extract_layers`` entry.
        """
        return vision_activations(self.vision, pixel_values, self.config.extract_layers)

    def embed_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Prompt embeddings of tokenised texts.

        Arguments:
            input_ids: PxT token ids; attention_mask: PxT, 1 for real tokens.

        Returns:
            PxE projected text embeddings (not normalised).
        """
        pooled = self.text(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return self.text_projection(pooled)

    def embed_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings of example images, through the whole image tower.

        Arguments:
            pixel_values: Px3xHxW normalised example images.

        Returns:
            PxE projected image embeddings (not normalised).
        """
        pooled = self.vision(pixel_values=pixel_values, interpolate_pos_encoding=True).pooler_output
        return self.visual_projection(pooled)

    def decode(self, activations: list[torch.Tensor], conditional: torch.Tensor, size: tuple[int, int]
               ) -> torch.Tensor:
        """Mask logits for each image and each of its prompts.

        Arguments:
            activations: from :meth:`encode_image`, batch B.
            conditional: (B*P)xE embeddings, P prompts per image, grouped by image.
            size: (H, W) of the model input.

        Returns:
            (B*P)xHxW logits.
        """
        patch = self.config.patch_size
        return self.decoder(activations, conditional, (size[0] // patch, size[1] // patch))

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        conditional_pixel_values: torch.Tensor | None = None,
        conditional_embeddings: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Same contract as transformers' ``CLIPSegForImageSegmentation(...).logits``.

        Arguments:
            pixel_values: Bx3xHxW images; one prompt per image (text, example image or embedding).

        Returns:
            BxHxW logits (B = 1 stays 1).
        """
        if conditional_embeddings is None:
            if input_ids is not None:
                conditional_embeddings = self.embed_text(input_ids, attention_mask)
            elif conditional_pixel_values is not None:
                conditional_embeddings = self.embed_image(conditional_pixel_values)
            else:
                raise ValueError("give input_ids, conditional_pixel_values or conditional_embeddings")
        if conditional_embeddings.shape[0] != pixel_values.shape[0]:
            raise ValueError("give exactly one prompt per image")
        activations = self.encode_image(pixel_values)
        return self.decode(activations, conditional_embeddings, tuple(pixel_values.shape[-2:]))
