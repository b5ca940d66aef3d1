"""Our CLIPSeg decoder: FiLM conditioning, post-norm transformer blocks, transposed-conv upsampling.

Parameter names follow the published checkpoints (``decoder.*``), so loading is a prefix strip.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from clipseg_cli.modeling.config import ClipSegConfig


class Attention(nn.Module):
    """Multi-head self-attention with separate q/k/v projections."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over tokens.

        Arguments:
            x: BxLxD tokens.

        Returns:
            BxLxD attended tokens.
        """
        b, n, d = x.shape
        q, k, v = (proj(x).view(b, n, self.heads, d // self.heads).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class MLP(nn.Module):
    """Two linear layers with a ReLU between them."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


class DecoderBlock(nn.Module):
    """A post-norm transformer encoder layer: norm(x + attn(x)), then norm(x + mlp(x))."""

    def __init__(self, dim: int, heads: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.self_attn = Attention(dim, heads)
        self.layer_norm1 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, hidden)
        self.layer_norm2 = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Arguments: x: BxLxD. Returns: BxLxD."""
        x = self.layer_norm1(x + self.self_attn(x))
        return self.layer_norm2(x + self.mlp(x))


def build_upsampler(dim: int, patch: int, complex_: bool) -> nn.Module:
    """Transposed convolutions from the token grid back to pixels (a factor of ``patch``).

    Returns:
        ``ConvTranspose2d(dim, 1, patch, stride=patch)``; or, for the refined checkpoints,
        Conv3x3 -> ReLU -> ConvT(dim, dim/2, patch/4, s patch/4) -> ReLU -> ConvT(dim/2, 1, 4, s4).
    """
    if not complex_:
        return nn.ConvTranspose2d(dim, 1, patch, stride=patch)
    k = patch // 4
    return nn.Sequential(
        nn.Conv2d(dim, dim, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.ConvTranspose2d(dim, dim // 2, kernel_size=k, stride=k),
        nn.ReLU(),
        nn.ConvTranspose2d(dim // 2, 1, kernel_size=k, stride=k),
    )


class Decoder(nn.Module):
    """Turns backbone activations and a prompt embedding into mask logits."""

    def __init__(self, config: ClipSegConfig) -> None:
        super().__init__()
        dim, depth = config.reduce_dim, len(config.extract_layers)
        self.conditional_layer = config.conditional_layer
        self.patch = config.patch_size
        self.film_mul = nn.Linear(config.projection_dim, dim)
        self.film_add = nn.Linear(config.projection_dim, dim)
        self.reduces = nn.ModuleList(nn.Linear(config.vision["hidden_size"], dim) for _ in range(depth))
        self.layers = nn.ModuleList(
            DecoderBlock(dim, config.decoder_num_attention_heads, config.decoder_intermediate_size,
                         config.layer_norm_eps)
            for _ in range(depth)
        )
        self.transposed_convolution = build_upsampler(dim, self.patch, config.use_complex_transposed_convolution)

    def forward(
        self, activations: Sequence[torch.Tensor], conditional: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        """Decode masks for every (image, prompt) pair.

        Arguments:
            activations: per extracted layer (shallow to deep), BxLxC with L = 1 + gh*gw.
            conditional: (B*P)xE prompt embeddings; rows b*P .. b*P+P-1 belong to image b.
            grid: (gh, gw), the token grid of the images.

        Returns:
            (B*P)x(gh*patch)x(gw*patch) logits.
        """
        batch = activations[0].shape[0]
        prompts = conditional.shape[0] // batch
        x = None
        for i, (activation, reduce, block) in enumerate(
            zip(reversed(activations), self.reduces, self.layers, strict=True)
        ):
            # the reduction does not depend on the prompt: compute it once per image
            reduced = reduce(activation).repeat_interleave(prompts, dim=0)
            x = reduced if x is None else reduced + x
            if i == self.conditional_layer:
                x = self.film_mul(conditional)[:, None] * x + self.film_add(conditional)[:, None]
            x = block(x)
        x = x[:, 1:].transpose(1, 2).reshape(x.shape[0], x.shape[2], *grid)
        return self.transposed_convolution(x)[:, 0]
