"""Strict loading of a checkpoint in the Hugging Face layout into our ClipSeg.

Reading the small files (config, preprocessing) does not import torch; loading the weights does.
"""

from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from clipseg_cli.constants import CONFIG_FILE, MERGES_FILE, PICKLE_FILE, SAFETENSORS_FILE, TOKENIZER_FILE, VOCAB_FILE
from clipseg_cli.errors import CheckpointError
from clipseg_cli.imaging.preprocess import Preprocessing
from clipseg_cli.modeling.config import ClipSegConfig, read_checkpoint_json

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from clipseg_cli.modeling import ClipSeg

SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64",
                      "I64": "int64", "I32": "int32", "U8": "uint8", "BOOL": "bool"}  # torch's names
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
    raw = read_checkpoint_json(path)
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


def read_safetensors(path: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Memory-map a safetensors file; tensors already in ``dtype`` stay views of the file.

    Tensors that need converting are converted one at a time and their file pages released at
    once, so loading bf16 weights from an fp32 file never holds both copies in memory.

    Returns:
        The file's tensors by name.
    """
    import torch

    with path.open("rb") as stream:
        mapped = mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_COPY)
    (length,) = struct.unpack("<Q", mapped[:8])
    header = json.loads(mapped[8 : 8 + length])
    base = 8 + length
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = (base + offset for offset in info["data_offsets"])
        if end > len(mapped) or start > end:
            raise ValueError(f"tensor {name} lies past the end of the file ({len(mapped)} bytes)")
        stored = getattr(torch, SAFETENSORS_DTYPES[info["dtype"]])
        tensor = torch.frombuffer(mapped, dtype=stored, count=(end - start) // stored.itemsize, offset=start)
        tensor = tensor.reshape(info["shape"])
        if tensor.is_floating_point() and stored != dtype:
            tensor = tensor.to(dtype)
            page = start - start % mmap.PAGESIZE
            mapped.madvise(mmap.MADV_DONTNEED, page, end - page)  # drop the file pages we read
        tensors[name] = tensor
    return tensors


def read_state_dict(path: Path, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Read the tensors of a weights file, by memory map.

    Returns:
        The checkpoint's tensors by name, floating-point ones in ``dtype`` (default float32).
    """
    import torch

    dtype = dtype or torch.float32
    try:
        if path.suffix == ".safetensors":
            return read_safetensors(path, dtype)
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return {key: value.to(dtype) if value.is_floating_point() else value for key, value in state.items()}
    except Exception as exc:  # a damaged file raises many types
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


def fill(model: ClipSeg, tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Assign every parameter and buffer of ``model`` from ``tensors``, checking names and shapes.

    The tensors arrive in the wanted dtype (`read_state_dict` converts them) and are assigned as they are.
    """
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
    import torch

    model.load_state_dict(tensors, strict=True, assign=True)
    for module in model.modules():  # non-persistent index buffers are not in checkpoints
        ids = getattr(module, "position_ids", None)
        if isinstance(ids, torch.Tensor) and ids.is_meta:
            module.position_ids = torch.arange(ids.shape[-1]).expand(1, -1)


def load_directory(directory: Path, dtype: torch.dtype | None = None) -> ClipSeg:
    """Build the model described by a checkpoint directory and fill it (float32 unless ``dtype``).

    Returns:
        The model in eval mode on the CPU.
    """
    import torch

    from clipseg_cli.modeling import ClipSeg

    config = read_config(directory)
    path = weights_file(directory)
    tensors = convert_state_dict(read_state_dict(path, dtype), path)
    with torch.device("meta"):
        model = ClipSeg.build(config)
    fill(model, tensors, path)
    return model.eval().requires_grad_(False)


def load_tokenizer(directory: Path, config: ClipSegConfig) -> PreTrainedTokenizerBase:
    """CLIP's BPE tokenizer of a checkpoint: tokenizer.json, or vocab.json with merges.txt.

    The same class and files as transformers' CLIPSegProcessor, so prompts get the same tokens.

    Returns:
        A transformers ``CLIPTokenizer``; raises CheckpointError naming the files looked for.
    """
    if not (directory / TOKENIZER_FILE).is_file() and not all(
        (directory / name).is_file() for name in (VOCAB_FILE, MERGES_FILE)
    ):
        raise CheckpointError(
            directory, f"no tokenizer: looked for {TOKENIZER_FILE}, or {VOCAB_FILE} with {MERGES_FILE}; copy the "
            "checkpoint's tokenizer files beside its weights (or fetch them with: clipseg download-weights)",
        )
    from transformers import CLIPTokenizer

    try:
        tokenizer = CLIPTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as exc:  # damaged tokenizer files raise many types
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise CheckpointError(directory, f"cannot read the tokenizer files ({reason})") from None
    vocab = config.text["vocab_size"]
    if len(tokenizer) > vocab or tokenizer.pad_token_id is None:
        raise CheckpointError(directory, f"the tokenizer ({len(tokenizer)} tokens) does not fit the text tower "
                              f"({vocab} tokens); the tokenizer files belong to another model")
    return tokenizer


def load_processing(directory: Path) -> tuple[Preprocessing, PreTrainedTokenizerBase]:
    """A checkpoint's image preprocessing and tokenizer, checked against its config.json.

    Returns:
        (preprocessing, tokenizer).
    """
    config, preprocessing = check_processing(directory)
    return preprocessing, load_tokenizer(directory, config)


def check_processing(directory: Path) -> tuple[ClipSegConfig, Preprocessing]:
    """A checkpoint's config and image preprocessing, checked against each other.

    Returns:
        (config, preprocessing).
    """
    config = read_config(directory)
    preprocessing = Preprocessing.from_checkpoint(directory)
    if min(preprocessing.size) < config.patch_size:
        height, width = preprocessing.size
        raise CheckpointError(directory, f"input size {height}x{width} of its preprocessing is smaller than one "
                              f"patch ({config.patch_size} pixels, config.json)")
    return config, preprocessing


def checkpoint_dir(
    name: str | Path, *, offline: bool | None = None, revision: str | None = None, progress: bool = True
) -> Path:
    """A local checkpoint directory for a path, a hub id or a registry alias.

    Returns:
        The directory (downloaded first when needed and allowed).
    """
    if Path(name).is_dir():
        return Path(name)
    from clipseg_cli.checkpoints.download import locate

    return locate(str(name), revision=revision, offline=offline, progress=progress)


def load_model(
    name: str | Path, *, dtype: torch.dtype | None = None, offline: bool | None = None, revision: str | None = None
) -> ClipSeg:
    """Load ``name`` (directory, hub id or alias) into our ClipSeg.

    Returns:
        The model in eval mode on the CPU.
    """
    return load_directory(checkpoint_dir(name, offline=offline, revision=revision), dtype)
