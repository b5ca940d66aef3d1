"""Rewrites for the fast precisions (bf16, fp16): same function, fewer passes over memory.

fp32 never takes this path: it stays the reference computation, bit for bit.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface

from clipseg_cli.modeling.clipseg import ClipSeg

QUICK_GELU_SCALE = 1.702  # quick_gelu(x) = x * sigmoid(1.702 x) = silu(1.702 x) / 1.702
CPU_ATTENTION = "clipseg_cpu_bf16"


def cpu_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Unmasked self-attention as two batched matmuls and a softmax.

    On CPUs with bf16 dot-product units this is about 1.5x faster than torch's fused CPU
    kernel, which computes in fp32. The softmax accumulates in fp32 internally.

    Arguments:
        query, key, value: BxHxLxD.

    Returns:
        (BxLxHxD attended values, None).
    """
    batch, heads, length, dim = query.shape
    q = query.reshape(batch * heads, length, dim)
    k = key.reshape(batch * heads, length, dim)
    scores = torch.bmm(q, k.transpose(1, 2))
    if scaling != 1.0:  # speed_up folds the scale into the query projection
        scores.mul_(scaling)
    weights = torch.softmax(scores, dim=-1)
    out = torch.bmm(weights, value.reshape(batch * heads, length, dim))
    return out.view(batch, heads, length, dim).transpose(1, 2), None


AttentionInterface.register(CPU_ATTENTION, cpu_attention)


def fold_quick_gelu(mlp: nn.Module) -> None:
    """Turn fc2(quick_gelu(fc1 x)) into fc2'(silu(fc1' x)): one fused activation instead of three ops."""
    with torch.no_grad():
        mlp.fc1.weight.mul_(QUICK_GELU_SCALE)
        mlp.fc1.bias.mul_(QUICK_GELU_SCALE)
        mlp.fc2.weight.div_(QUICK_GELU_SCALE)
    mlp.activation_fn = nn.SiLU(inplace=True)


def fold_query_scale(attention: nn.Module) -> None:
    """Scale the query projection by 1/sqrt(head_dim) once, instead of every score matrix."""
    with torch.no_grad():
        attention.q_proj.weight.mul_(attention.scale)
        attention.q_proj.bias.mul_(attention.scale)
    attention.scale = 1.0


def speed_up(model: ClipSeg, device: torch.device) -> None:
    """Apply the fast-precision rewrites to the image tower, in place."""
    vision = model.vision
    for layer in vision.encoder.layers:
        if vision.config.hidden_act == "quick_gelu":
            fold_quick_gelu(layer.mlp)
        if device.type == "cpu":
            fold_query_scale(layer.self_attn)
    if device.type == "cpu":
        vision.config._attn_implementation = CPU_ATTENTION
