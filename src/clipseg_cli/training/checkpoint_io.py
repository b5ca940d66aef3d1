"""Our trained decoder in and out of checkpoints in the published (Hugging Face) layout.

The exported folder is the base checkpoint with the decoder's tensors replaced: every other tensor
(the frozen towers, the projections, even the unused ``clip.logit_scale``) is copied as it is, and
the config, preprocessing and tokenizer files are copied from the base. So ``--weights OUT_DIR``,
``CLIPSegForImageSegmentation.from_pretrained(OUT_DIR)`` and ``CLIPSegProcessor.from_pretrained(OUT_DIR)``
all load it. Every file is written atomically (a temporary file, then ``os.replace``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from clipseg_cli.checkpoints.loading import PREFIXES, convert_state_dict, read_config, read_state_dict, weights_file
from clipseg_cli.constants import CONFIG_FILE, PICKLE_FILE, SAFETENSORS_FILE
from clipseg_cli.errors import CheckpointError
from clipseg_cli.imaging.writing import atomic_write
from clipseg_cli.modeling.decoder import Decoder

DECODER_PREFIX = "decoder."
SKIPPED_FILES = (SAFETENSORS_FILE, PICKLE_FILE, "training.json")  # not copied from the base


def published_state_dict(ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `convert_state_dict`: our parameter names back to the published ones.

    Returns:
        Tensors keyed as in the published checkpoints (``clip.vision_model.*``, ``decoder.*``, ...).
    """
    inverse = {ours_prefix: published for published, ours_prefix in PREFIXES.items()}
    renamed = {}
    for key, tensor in ours.items():
        prefix = next((p for p in inverse if key.startswith(p)), None)
        if prefix is None:
            raise ValueError(f"{key!r} is not a parameter of ClipSeg")
        renamed[inverse[prefix] + key[len(prefix):]] = tensor
    return renamed


def load_decoder(directory: Path) -> Decoder:
    """The decoder of a checkpoint, in float32 and trainable (the towers are not loaded).

    Returns:
        A Decoder in train mode, every tensor from the checkpoint.
    """
    path = weights_file(directory)
    tensors = convert_state_dict(read_state_dict(path, torch.float32), path)
    decoder = Decoder(read_config(directory))
    state = {key[len(DECODER_PREFIX):]: value.clone() for key, value in tensors.items()
             if key.startswith(DECODER_PREFIX)}
    try:
        decoder.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(path, f"its decoder does not fit config.json ({str(exc).splitlines()[0]})") from None
    return decoder


def copy_processing_files(base: Path, out_dir: Path) -> None:
    """Copy the config, preprocessing and tokenizer files of ``base`` (each atomically) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for source in sorted(base.iterdir()):
        if source.is_file() and source.suffix in (".json", ".txt") and source.name not in SKIPPED_FILES:
            atomic_write(out_dir / source.name, lambda handle, s=source: shutil.copyfileobj(s.open("rb"), handle))
    if not (out_dir / CONFIG_FILE).is_file():
        raise CheckpointError(base, f"no {CONFIG_FILE} to copy")


def save_weights(base: Path, decoder: Decoder, out_dir: Path, metadata: dict[str, str] | None = None) -> Path:
    """Write ``out_dir/model.safetensors``: the base checkpoint's tensors with ``decoder``'s in place.

    Returns:
        The path written.
    """
    from safetensors.torch import save

    source = weights_file(base)
    tensors = dict(read_state_dict(source, torch.float32))
    trained = published_state_dict({DECODER_PREFIX + key: value.detach().float().contiguous()
                                    for key, value in decoder.state_dict().items()})
    unknown = sorted(set(trained) - set(tensors))
    if unknown:
        raise CheckpointError(source, f"has no tensor {unknown[0]!r}; the decoder was not built from this checkpoint")
    tensors.update(trained)
    tensors = {key: value.contiguous() for key, value in tensors.items()}
    data = save(tensors, metadata={"format": "pt", **(metadata or {})})
    target = out_dir / SAFETENSORS_FILE
    atomic_write(target, lambda handle: handle.write(data))
    return target
