"""Small random CLIPSeg checkpoints in the Hugging Face layout, built with transformers.

Nothing is downloaded: the configs are tiny and the CLIP BPE tokenizer is written here.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, CLIPTokenizer

VOCAB_SIZE = 600
MERGES = ["r e", "c a", "ca r</w>", "t r", "e e</w>", "tr ee</w>", "d o", "do g</w>"]

# name -> (CLIPSegConfig keyword overrides)
CONFIGS: dict[str, dict] = {
    "plain": {},
    "complex": {"use_complex_transposed_convolution": True},
    "layers": {"extract_layers": [0, 2, 3]},
    "conditional1": {"conditional_layer": 1, "text_config": {"eos_token_id": 521}},
    "rd16": {"reduce_dim": 16, "use_complex_transposed_convolution": True},
}


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins for bytes that byte-level BPE (GPT-2, CLIP) uses."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def write_tokenizer(directory: Path) -> None:
    """Write a tiny CLIP BPE vocabulary (every byte, a few merges) and its tokenizer config."""
    symbols = byte_symbols()
    vocab = symbols + [s + "</w>" for s in symbols]
    vocab += ["".join(m.split()) for m in MERGES]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n", encoding="utf-8")
    CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt")).save_pretrained(directory)


def small_config(**overrides) -> CLIPSegConfig:
    """A CLIPSeg config with the published structure at toy size (patch 16 at 64x64 input)."""
    text = dict(vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=32, bos_token_id=520, eos_token_id=2,
                pad_token_id=521)
    vision = dict(hidden_size=48, intermediate_size=64, num_hidden_layers=5, num_attention_heads=4,
                  image_size=32, patch_size=16)
    kwargs = dict(text_config=text, vision_config=vision, projection_dim=24, extract_layers=[1, 2, 4],
                  reduce_dim=8, decoder_num_attention_heads=2, decoder_intermediate_size=20)
    text.update(overrides.pop("text_config", {}))
    kwargs.update(overrides)
    return CLIPSegConfig(**kwargs)


def write_preprocessor(directory: Path, size: int) -> None:
    """The published preprocessing, at the toy input size."""
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": True, "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255,
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
        "image_processor_type": "ViTImageProcessor", "processor_class": "CLIPSegProcessor",
        "resample": 2, "size": {"height": size, "width": size},
    }), encoding="utf-8")


def build_checkpoint(directory: Path, name: str = "plain", seed: int = 0, size: int = 64) -> Path:
    """Save a random CLIPSeg in the Hugging Face layout (safetensors, tokenizer, preprocessor).

    Returns:
        ``directory``.
    """
    torch.manual_seed(seed)
    model = CLIPSegForImageSegmentation(small_config(**CONFIGS[name])).eval()
    with torch.no_grad():  # random biases and norms, so that every tensor matters
        for param in model.parameters():
            if param.dim() == 1:
                param.normal_(0, 0.2)
        for film in (model.decoder.film_mul, model.decoder.film_add):  # make text prompts matter
            film.weight.normal_(0, 1.0)
    model.save_pretrained(directory, safe_serialization=True)
    write_tokenizer(directory)
    write_preprocessor(directory, size)
    return directory
