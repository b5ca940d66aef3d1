"""Small random CLIPSeg checkpoints in the Hugging Face layout, built with transformers; and a tiny SAM.

Nothing is downloaded: the configs are tiny and the CLIP BPE tokenizer is written here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoImageProcessor, CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor

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
# Checkpoints for training tests only (not iterated by the layout and backend tests): finer patches
# (8 px) and a wider decoder, a model that training can teach masks with real edges.
TRAINING_CONFIGS: dict[str, dict] = {
    "fine": {"reduce_dim": 16, "decoder_intermediate_size": 64, "extract_layers": [0, 1, 2],
             "vision_config": dict(hidden_size=48, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                                   image_size=32, patch_size=8)},
}
# name -> random seed, where seed 0 gives two probe prompts too similar maps
SEEDS: dict[str, int] = {"complex": 1, "rd16": 2}
# What `assert_prompts_differ` compares: two texts and an example image give clearly different maps.
PROBE_TEXTS = ("red car", "tree")
MIN_MEAN_DIFFERENCE = 0.05  # mean absolute difference of the probability maps
LOGIT_SPREAD = 2.5  # standard deviation of the calibrated logits on the probe inputs
MIN_MASK_DIFFERENCE = 0.05  # fraction of pixels where the masks (p >= 0.4) differ


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins for bytes that byte-level BPE (GPT-2, CLIP) uses."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def write_tokenizer(directory: Path) -> None:
    """Write a tiny CLIP BPE vocabulary (every byte, a few merges) in the published layout (no tokenizer.json)."""
    symbols = byte_symbols()
    vocab = symbols + [s + "</w>" for s in symbols]
    vocab += ["".join(m.split()) for m in MERGES]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n", encoding="utf-8")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>"}
    (directory / "special_tokens_map.json").write_text(json.dumps(special), encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(json.dumps({  # as in the published checkpoints (2022)
        **special, "add_prefix_space": False, "do_lower_case": True, "errors": "replace", "model_max_length": 77,
        "processor_class": "CLIPSegProcessor", "tokenizer_class": "CLIPTokenizer",
    }), encoding="utf-8")


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


def make_prompts_matter(model: CLIPSegForImageSegmentation) -> None:
    """Scale a random CLIPSeg so that different prompts give clearly different maps.

    At random init every prompt gets nearly the same map: the text tower's output is dominated by
    what all prompts share (biases, the end token), FiLM's shift by its constant part, and the
    upsampler's logits barely leave 0. Each scaling below removes one of those; the model's function
    stays a CLIPSeg, so the equivalence with transformers is untouched.
    """
    with torch.no_grad():
        for name, param in model.named_parameters():  # random biases and norms, so that every tensor matters
            if param.dim() == 1:
                is_norm_scale = "norm" in name and name.endswith("weight")
                param.normal_(1.0 if is_norm_scale else 0.0, 0.2)
        text = model.clip.text_model
        text.embeddings.token_embedding.weight.normal_(0, 1.0)  # tokens, not positions, dominate
        for layer in text.encoder.layers:  # the end token's output mixes in the other tokens
            layer.self_attn.v_proj.weight.mul_(3.0)
            layer.self_attn.out_proj.weight.mul_(3.0)
        for projection in (model.clip.text_projection, model.clip.visual_projection):
            projection.weight.normal_(0, 2.0 / projection.weight.shape[1] ** 0.5)
        decoder = model.decoder
        fan_in = decoder.film_mul.weight.shape[1]
        decoder.film_mul.weight.normal_(0, 5.0 / fan_in**0.5)  # the prompt picks image channels ...
        decoder.film_add.weight.normal_(0, 0.1 / fan_in**0.5)  # ... rather than shifting all tokens alike
        for reduce in decoder.reduces[1:]:  # shallower layers refine, they don't drown the prompt
            reduce.weight.mul_(0.05)
            reduce.bias.mul_(0.05)



def build_checkpoint(directory: Path, name: str = "plain", seed: int | None = None, size: int = 64) -> Path:
    """Save a random CLIPSeg in the Hugging Face layout (safetensors, tokenizer, preprocessor).

    Returns:
        ``directory``.
    """
    torch.manual_seed(SEEDS.get(name, 0) if seed is None else seed)
    model = CLIPSegForImageSegmentation(small_config(**{**CONFIGS, **TRAINING_CONFIGS}[name])).eval()
    make_prompts_matter(model)
    write_tokenizer(directory)
    write_preprocessor(directory, size)
    calibrate_logits(model, directory)
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def save_modern_layout(source: Path, target: Path) -> Path:
    """Save a checkpoint again the way a user of today's transformers would: processor, then model.

    Today's ``save_pretrained`` writes processor_config.json (the preprocessing nested under
    ``image_processor``) and tokenizer.json. Files of the published layout it may still write
    (preprocessor_config.json, vocab.json, merges.txt) are removed, so that only the new layout remains.

    Returns:
        ``target``.
    """
    CLIPSegProcessor.from_pretrained(source).save_pretrained(target)
    CLIPSegForImageSegmentation.from_pretrained(source).save_pretrained(target, safe_serialization=True)
    for name in ("preprocessor_config.json", "vocab.json", "merges.txt", "special_tokens_map.json"):
        (target / name).unlink(missing_ok=True)
    return target


def calibrate_logits(model: CLIPSegForImageSegmentation, directory: Path) -> None:
    """Scale and shift the last upsampling layer so that logits centre on 0 and spread a few units.

    Random weights give logits of about 0.1 (every map a flat 0.5) or of hundreds (every map 0 or
    1); neither can show a wrong resize filter or a threshold off by one step.
    """
    processor = CLIPSegProcessor.from_pretrained(directory)
    inputs = processor(text=list(PROBE_TEXTS), images=[probe_image(0)] * len(PROBE_TEXTS), padding=True,
                       return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
        scale = LOGIT_SPREAD / logits.std()
        last = [m for m in model.decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)][-1]
        last.weight.mul_(scale)
        last.bias.sub_(logits.median()).mul_(scale)


def probe_image(seed: int = 0, size: tuple[int, int] = (70, 50)) -> Image.Image:
    """A random RGB image of (width, height)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def assert_prompts_differ(directory: Path) -> None:
    """Fail unless two text prompts and an example image give clearly different maps on one image.

    Tests of prompt order, union, negatives, templates and image prompts can only fail if the
    maps they compare differ: this checks it, for the checkpoint in ``directory``.
    """
    from clipseg_cli import Segmenter

    segmenter = Segmenter.from_pretrained(directory, device="cpu", precision="fp32")
    probs = segmenter.predict(probe_image(0), [*PROBE_TEXTS, probe_image(1, (40, 40))])
    names = [*PROBE_TEXTS, "an example image"]
    for i, j in ((0, 1), (0, 2), (1, 2)):
        mean_difference = float(np.abs(probs[i] - probs[j]).mean())
        mask_difference = float(((probs[i] >= 0.4) != (probs[j] >= 0.4)).mean())
        assert mean_difference >= MIN_MEAN_DIFFERENCE and mask_difference >= MIN_MASK_DIFFERENCE, (
            f"{directory}: {names[i]!r} and {names[j]!r} give maps too alike (mean difference "
            f"{mean_difference:.3f}, masks differ on {mask_difference:.1%}); the fixture cannot tell prompts apart"
        )


class Reference:
    """transformers' CLIPSeg pipeline for a checkpoint folder, wired as a user does it by hand.

    CLIPSegProcessor + CLIPSegForImageSegmentation, logits upsampled bilinearly (align_corners=False)
    to the image's size, then the sigmoid: what our Segmenter must equal to float precision.
    """

    def __init__(self, directory: Path) -> None:
        self.processor = CLIPSegProcessor.from_pretrained(directory)
        if getattr(self.processor.image_processor, "backend", "pil") != "pil":  # torchvision is installed
            pil = AutoImageProcessor.from_pretrained(directory, backend="pil")  # the published preprocessing
            self.processor = CLIPSegProcessor(image_processor=pil, tokenizer=self.processor.tokenizer)
        self.model = CLIPSegForImageSegmentation.from_pretrained(directory).eval()

    def probabilities(self, image: Image.Image, prompts: list[str | Image.Image]) -> np.ndarray:
        """Probability maps of ``image`` for text prompts and example images (``visual_prompt=``).

        Returns:
            float32 array PxHxW, in the order of ``prompts``.
        """
        texts = [p for p in prompts if isinstance(p, str)]
        examples = [p for p in prompts if not isinstance(p, str)]
        maps = {}
        with torch.no_grad():
            if texts:
                inputs = self.processor(text=texts, images=[image] * len(texts), padding=True, return_tensors="pt")
                maps.update(zip(map(id, texts), self._upsampled(inputs, image), strict=True))
            if examples:
                inputs = self.processor(images=[image] * len(examples), visual_prompt=examples, return_tensors="pt")
                maps.update(zip(map(id, examples), self._upsampled(inputs, image), strict=True))
        return np.stack([maps[id(p)] for p in prompts])

    def _upsampled(self, inputs, image: Image.Image) -> np.ndarray:
        logits = self.model(**inputs).logits
        logits = logits.reshape(-1, 1, *logits.shape[-2:])
        upsampled = F.interpolate(logits, size=(image.height, image.width), mode="bilinear", align_corners=False)
        return torch.sigmoid(upsampled[:, 0]).numpy()


# ---- A synthetic segmentation task (tests of clipseg train / eval) ------------------------------

SHAPE_COLOURS = {"red": (220, 30, 30), "green": (30, 190, 40), "blue": (40, 60, 230)}
SHAPES = ("circle", "square")


def shape_mask(shape: str, centre: tuple[int, int], radius: int, size: tuple[int, int]) -> np.ndarray:
    """A filled circle, square or triangle as an HxW bool array of (width, height) ``size``."""
    ys, xs = np.mgrid[: size[1], : size[0]]
    dx, dy = xs - centre[0], ys - centre[1]
    if shape == "circle":
        return dx**2 + dy**2 <= radius**2
    if shape == "square":
        return (np.abs(dx) <= radius * 0.85) & (np.abs(dy) <= radius * 0.85)
    return (dy <= radius * 0.8) & (dy >= -radius) & (np.abs(dx) <= (dy + radius) * 0.6)  # apex up


def shapes_task(folder: Path, images: int, seed: int = 0, size: tuple[int, int] = (64, 64)) -> list[dict]:
    """Images of two coloured shapes on a textured background, with one mask per shape.

    Each record's prompt names its shape's colour and kind ("red circle"); the two shapes of an
    image differ in both. A random CLIPSeg cannot do this; a trained decoder can.

    Returns:
        Manifest records {"image", "prompt", "mask"} with paths relative to ``folder``.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(images):
        ys, xs = np.mgrid[: size[1], : size[0]]
        stripes = 40 * np.sin(xs * rng.uniform(0.2, 0.6) + ys * rng.uniform(0.1, 0.5))[..., None]
        pixels = rng.normal(120, 18, (size[1], size[0], 3)) + stripes
        colours = rng.choice(list(SHAPE_COLOURS), 2, replace=False)
        kinds = rng.choice(SHAPES, 2, replace=False)
        left = rng.random() < 0.5  # which shape sits on the left half
        for slot, (colour, kind) in enumerate(zip(colours, kinds, strict=True)):
            radius = int(rng.integers(size[0] // 6, size[0] // 4 - 1))
            half = (slot == 0) == left
            low = radius if half else size[0] // 2 + radius  # the two shapes never overlap
            cx = int(rng.integers(low, low + size[0] // 2 - 2 * radius + 1))
            cy = int(rng.integers(radius, size[1] - radius))
            mask = shape_mask(kind, (cx, cy), radius, size)
            pixels[mask] = np.asarray(SHAPE_COLOURS[colour]) + rng.normal(0, 6, (int(mask.sum()), 3))
            name = f"img{index:03d}.{colour}-{kind}.mask.png"
            Image.fromarray(mask.astype(np.uint8) * 255).save(folder / name)
            records.append({"image": f"img{index:03d}.png", "prompt": f"{colour} {kind}", "mask": name})
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"img{index:03d}.png")
    return records


def write_manifest(path: Path, records: list[dict]) -> Path:
    """Write records as JSON Lines (the format ``clipseg batch --json`` prints). Returns: ``path``."""
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def build_sam_checkpoint(directory: Path, size: int = 64) -> Path:
    """A tiny random SamModel (64 x 64 input) with its SamProcessor, weights spread so that prompts matter."""
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    vision = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "mlp_dim": 64, "output_channels": 32,
              "image_size": size, "patch_size": 8, "window_size": 2, "global_attn_indexes": [1], "num_pos_feats": 16}
    prompt = {"hidden_size": 32, "image_size": size, "patch_size": 8, "mask_input_channels": 4}
    decoder = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "mlp_dim": 64,
               "iou_head_hidden_dim": 32}
    torch.manual_seed(0)
    model = SamModel(SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim > 1:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) / parameter.shape[-1] ** 0.5)
    model.save_pretrained(directory)
    quarter = {"height": size // 4, "width": size // 4}
    SamProcessor(image_processor=SamImageProcessor(
        size={"longest_edge": size}, pad_size={"height": size, "width": size}, mask_size={"longest_edge": size // 4},
        mask_pad_size=quarter)).save_pretrained(directory)
    return directory
