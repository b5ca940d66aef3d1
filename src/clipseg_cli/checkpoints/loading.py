"""Strict loading of a checkpoint in the Hugging Face layout into our ClipSeg."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from clipseg_cli.constants import CONFIG_FILE, PICKLE_FILE, SAFETENSORS_FILE
from clipseg_cli.errors import CheckpointError
from clipseg_cli.modeling import ClipSeg, ClipSegConfig

# Checkpoint prefix -> our module path.
PREFIXES = {
    "clip.vision_model.": "vision.",
    "clip.text_model.": "text.",
    "clip.visual_projection.": "visual_projection.",
    "clip.text_projection.": "text_projection.",
    "decoder.": "decoder.",
}
# Checkpoint tensors we deliberately do not use.
UNUSED = ("clip.logit_scale",)  # the contrastive temperature: no part of segmentation
UNUSED_SUFFIXES = (".position_ids",)  # index buffers that older checkpoints saved; we rebuild them


def read_config(directory: Path) -> ClipSegConfig:
    """Read and check ``config.json`` of a checkpoint directory.

    Returns:
        The model config.
    """
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(path, "missing; a checkpoint directory needs config.json beside its weights")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(path, f"not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(path, "not a JSON object")
    return ClipSegConfig.from_dict(raw, path)


def weights_file(directory: Path) -> Path:
    """The weights file of a checkpoint: safetensors, or the pickled file only when it is alone.

    Returns:
        Path of model.safetensors or pytorch_model.bin.
    """
    for name in (SAFETENSORS_FILE, PICKLE_FILE):
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(directory, f"no {SAFETENSORS_FILE} or {PICKLE_FILE}; fetch it with: clipseg download-weights")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Memory-map the tensors of a weights file.

    Returns:
        The checkpoint's tensors by name.
    """
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # safetensors and torch raise many types for a damaged file
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            path, f"corrupt or truncated weights file ({reason}); fetch it again with: clipseg download-weights"
        ) from None


def convert_state_dict(state: dict[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    """Rename checkpoint tensors to our module paths, refusing any we do not know.

    Returns:
        Tensors keyed by our parameter names.
    """
    ours = {}
    for key, tensor in state.items():
        if key in UNUSED or key.endswith(UNUSED_SUFFIXES):
            continue
        prefix = next((p for p in PREFIXES if key.startswith(p)), None)
        if prefix is None:
            raise CheckpointError(source, f"unexpected tensor {key!r}: not part of a CLIPSeg checkpoint")
        ours[PREFIXES[prefix] + key[len(prefix):]] = tensor
    return ours


def fill(model: ClipSeg, tensors: dict[str, torch.Tensor], source: Path, dtype: torch.dtype) -> None:
    """Assign every parameter and buffer of ``model`` from ``tensors``, checking names and shapes."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in tensors]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(source, f"missing tensor {missing[0]!r}{more}; the file is incomplete or not CLIPSeg")
    for key, tensor in tensors.items():
        if key not in expected:
            raise CheckpointError(source, f"unexpected tensor {key!r} for this config")
        if tensor.shape != expected[key].shape:
            raise CheckpointError(
                source,
                f"tensor {key!r} has shape {tuple(tensor.shape)}, config.json implies {tuple(expected[key].shape)}",
            )
    converted = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    model.load_state_dict(converted, strict=True, assign=True)
    for module in model.modules():  # non-persistent index buffers are not in checkpoints
        ids = getattr(module, "position_ids", None)
        if isinstance(ids, torch.Tensor) and ids.is_meta:
            module.position_ids = torch.arange(ids.shape[-1]).expand(1, -1)


def load_directory(directory: Path, dtype: torch.dtype = torch.float32) -> ClipSeg:
    """Build the model described by a checkpoint directory and fill it.

    Returns:
        The model in eval mode on the CPU.
    """
    config = read_config(directory)
    path = weights_file(directory)
    tensors = convert_state_dict(read_state_dict(path), path)
    with torch.device("meta"):
        model = ClipSeg.build(config)
    fill(model, tensors, path, dtype)
    return model.eval().requires_grad_(False)


def checkpoint_dir(name: str | Path, *, offline: bool | None = None, revision: str | None = None) -> Path:
    """A local checkpoint directory for a path, a hub id or a registry alias.

    Returns:
        The directory (downloaded first when needed and allowed).
    """
    if Path(name).is_dir():
        return Path(name)
    from clipseg_cli.checkpoints.download import locate

    return locate(str(name), revision=revision, offline=offline)


def load_model(
    name: str | Path, *, dtype: torch.dtype = torch.float32, offline: bool | None = None, revision: str | None = None
) -> ClipSeg:
    """Load ``name`` (directory, hub id or alias) into our ClipSeg.

    Returns:
        The model in eval mode on the CPU.
    """
    return load_directory(checkpoint_dir(name, offline=offline, revision=revision), dtype)
