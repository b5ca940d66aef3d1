"""The bf16 fast path: scales folded in fp32 then cast, the rewritten image tower really runs, masks agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from clipseg_cli import Segmenter, load_model
from clipseg_cli.modeling.fastpath import CPU_ATTENTION, QUICK_GELU_SCALE
from factory import PROBE_TEXTS, probe_image


@pytest.fixture(scope="module")
def models(checkpoint):
    """(the fp32 model, a bf16 Segmenter on the CPU with transformers' modules) of the same checkpoint."""
    eager = Segmenter.from_pretrained(checkpoint, device="cpu", precision="bf16", backend="torch")
    return load_model(checkpoint), eager


def test_scales_are_folded_into_fp32_weights_then_cast(models) -> None:
    exact, fast = models
    for before, after in zip(exact.vision.encoder.layers, fast.model.vision.encoder.layers, strict=True):
        scale = before.self_attn.scale
        folded = {  # (fp32 tensor, factor) -> the bf16 tensor the fast path must hold
            (before.mlp.fc1.weight, QUICK_GELU_SCALE): after.mlp.fc1.weight,
            (before.mlp.fc1.bias, QUICK_GELU_SCALE): after.mlp.fc1.bias,
            (before.mlp.fc2.weight, 1 / QUICK_GELU_SCALE): after.mlp.fc2.weight,
            (before.self_attn.q_proj.weight, scale): after.self_attn.q_proj.weight,
            (before.self_attn.q_proj.bias, scale): after.self_attn.q_proj.bias,
        }
        for (weight, factor), result in folded.items():
            assert result.dtype == torch.bfloat16
            assert torch.equal(result, (weight * factor).to(torch.bfloat16))
        # folding after the cast rounds twice: the test can tell the two apart
        assert not torch.equal(after.mlp.fc1.weight, before.mlp.fc1.weight.to(torch.bfloat16) * QUICK_GELU_SCALE)
        assert not torch.equal(after.self_attn.q_proj.weight, before.self_attn.q_proj.weight.to(torch.bfloat16) * scale)
        assert torch.equal(after.mlp.fc2.bias, before.mlp.fc2.bias.to(torch.bfloat16))  # not folded


def test_bf16_runs_the_rewritten_tower_and_agrees_with_fp32(models, checkpoint, monkeypatch) -> None:
    _, fast = models
    vision = fast.model.vision
    assert vision.config._attn_implementation == CPU_ATTENTION
    assert all(isinstance(layer.mlp.activation_fn, torch.nn.SiLU) for layer in vision.encoder.layers)
    assert all(layer.self_attn.scale == 1.0 for layer in vision.encoder.layers)
    calls = []
    registered = ALL_ATTENTION_FUNCTIONS[CPU_ATTENTION]  # KeyError when the CPU attention is not registered

    def spy(module, query, *args, **kwargs):
        calls.append(query.dtype)
        return registered(module, query, *args, **kwargs)

    monkeypatch.setitem(AttentionInterface._global_mapping, CPU_ATTENTION, spy)
    image = probe_image(3)
    probs = fast.predict(image, list(PROBE_TEXTS))
    assert calls and set(calls) == {torch.bfloat16}  # every image-tower layer went through it
    exact = Segmenter.from_pretrained(checkpoint, device="cpu", precision="fp32").predict(image, list(PROBE_TEXTS))
    for fast_map, exact_map in zip(probs, exact, strict=True):
        assert 0.05 < (exact_map >= 0.4).mean() < 0.95  # masks with something to agree on
        assert ((fast_map >= 0.4) == (exact_map >= 0.4)).mean() >= 0.98
        assert np.abs(fast_map - exact_map).mean() < 0.01
