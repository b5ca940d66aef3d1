"""The model's configuration, read from a checkpoint's config.json and checked."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipseg_cli.errors import CheckpointError

# Defaults of transformers' CLIPSeg configs, for keys a config.json leaves out.
VISION_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "pad_token_id": 1,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
}
TOKEN_IDS = ("pad_token_id", "bos_token_id", "eos_token_id")  # may be 0
ACTIVATIONS = ("quick_gelu", "gelu", "relu", "gelu_new", "gelu_pytorch_tanh")


def read_checkpoint_json(path: Path) -> Any:
    """A checkpoint's JSON file (config, preprocessing, tokenizer settings), parsed.

    Raises:
        CheckpointError: naming the file when it cannot be read or is not JSON.
    """
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(path, f"not valid JSON ({' '.join(str(exc).split())})") from None


@dataclass(frozen=True)
class ClipSegConfig:
    """Every size of the network, taken from the checkpoint (never from a constant)."""

    vision: dict[str, Any] = field(default_factory=lambda: dict(VISION_DEFAULTS))
    text: dict[str, Any] = field(default_factory=lambda: dict(TEXT_DEFAULTS))
    projection_dim: int = 512
    extract_layers: tuple[int, ...] = (3, 6, 9)
    reduce_dim: int = 64
    conditional_layer: int = 0
    decoder_num_attention_heads: int = 4
    decoder_intermediate_size: int = 2048
    use_complex_transposed_convolution: bool = False

    @property
    def patch_size(self) -> int:
        return int(self.vision["patch_size"])

    @property
    def layer_norm_eps(self) -> float:
        return float(self.vision["layer_norm_eps"])

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str | Path = "config.json") -> ClipSegConfig:
        """Build and validate a config from the contents of a config.json.

        Returns:
            The checked config; raises CheckpointError naming ``source`` on a bad value.
        """

        def fail(reason: str) -> CheckpointError:
            return CheckpointError(source, f"{reason}; is this a CLIPSeg checkpoint?")

        if raw.get("model_type", "clipseg") != "clipseg":
            raise fail(f"model_type is {raw.get('model_type')!r}, expected 'clipseg'")
        for key in ("vision_config", "text_config"):
            if not isinstance(raw.get(key) or {}, dict):
                raise fail(f"{key} must be a JSON object, got {raw[key]!r}")
        if not isinstance(raw.get("extract_layers", []), list):
            raise fail(f"extract_layers must be a list of layer indices, got {raw['extract_layers']!r}")
        vision = {**VISION_DEFAULTS, **_known(raw.get("vision_config") or {}, VISION_DEFAULTS)}
        text = {**TEXT_DEFAULTS, **_known(raw.get("text_config") or {}, TEXT_DEFAULTS)}
        config = cls(
            vision=vision,
            text=text,
            projection_dim=raw.get("projection_dim", 512),
            extract_layers=tuple(raw.get("extract_layers", (3, 6, 9))),
            reduce_dim=raw.get("reduce_dim", 64),
            conditional_layer=raw.get("conditional_layer", 0),
            decoder_num_attention_heads=raw.get("decoder_num_attention_heads", 4),
            decoder_intermediate_size=raw.get("decoder_intermediate_size", 2048),
            use_complex_transposed_convolution=raw.get("use_complex_transposed_convolution", False),
        )
        problem = config.problem()
        if problem:
            raise fail(problem)
        return config

    def problem(self) -> str | None:
        """Say what is inconsistent in this config, if anything.

        Returns:
            A one-line description of the first problem, or None when the config is usable.
        """
        problem = self._tower_problem()
        if problem:
            return problem
        complex_ = self.use_complex_transposed_convolution
        if not isinstance(complex_, bool):
            return f"use_complex_transposed_convolution must be true or false, got {complex_!r}"
        depth = self.vision["num_hidden_layers"]
        layers = self.extract_layers
        if not layers or any(not _is_int(i) or not 0 <= i < depth for i in layers):
            return f"extract_layers {list(layers)!r} must be layer indices in 0..{depth - 1}"
        if not _is_int(self.conditional_layer) or not 0 <= self.conditional_layer < len(layers):
            return f"conditional_layer {self.conditional_layer!r} must be in 0..{len(layers) - 1}"
        if self.reduce_dim % self.decoder_num_attention_heads:
            return f"reduce_dim {self.reduce_dim} is not divisible by {self.decoder_num_attention_heads} heads"
        if self.use_complex_transposed_convolution and (self.patch_size % 4 or self.reduce_dim < 2):
            return f"complex upsampling needs a patch size divisible by 4, got {self.patch_size}"
        return None

    def _tower_problem(self) -> str | None:
        """The first field of the towers or decoder with a value of the wrong type or range, if any."""
        towers = (("vision_config", self.vision, VISION_DEFAULTS), ("text_config", self.text, TEXT_DEFAULTS))
        ints = {f"{tower}.{key}": values[key] for tower, values, defaults in towers
                for key, default in defaults.items() if _is_int(default) and key not in TOKEN_IDS}
        ints.update(projection_dim=self.projection_dim, reduce_dim=self.reduce_dim,
                    decoder_num_attention_heads=self.decoder_num_attention_heads,
                    decoder_intermediate_size=self.decoder_intermediate_size)
        for name, value in ints.items():
            if not _is_int(value) or value <= 0:
                return f"{name} must be a positive integer, got {value!r}"
        for key in TOKEN_IDS:  # only the end token is used: padding and start may be null
            value = self.text[key]
            if (value is not None or key == "eos_token_id") and (not _is_int(value) or value < 0):
                return f"text_config.{key} must be a token id (an integer >= 0), got {value!r}"
        for tower, values, _ in towers:
            if values["hidden_act"] not in ACTIVATIONS:
                return f"{tower}.hidden_act {values['hidden_act']!r} is not one of {', '.join(ACTIVATIONS)}"
            eps = values["layer_norm_eps"]
            if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < 1:
                return f"{tower}.layer_norm_eps must be a small positive number, got {eps!r}"
            if values["hidden_size"] % values["num_attention_heads"]:
                return (f"{tower}.hidden_size {values['hidden_size']} is not divisible by "
                        f"{values['num_attention_heads']} attention heads")
        if self.vision["num_channels"] != 3:
            return f"vision_config.num_channels must be 3 (RGB images), got {self.vision['num_channels']}"
        return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _known(values: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """Keep the architecture keys of a sub-config; drop generation and bookkeeping keys."""
    return {key: value for key, value in values.items() if key in defaults}
