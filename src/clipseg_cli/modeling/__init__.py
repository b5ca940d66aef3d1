"""The network: CLIP towers from transformers and our own decoder, one part per file.

Names are imported lazily: reading a config (``modeling.config``) does not import torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

_EXPORTS = {"ClipSeg": "clipseg_cli.modeling.clipseg", "ClipSegConfig": "clipseg_cli.modeling.config"}
__all__ = list(_EXPORTS)

if TYPE_CHECKING:
    from clipseg_cli.modeling.clipseg import ClipSeg
    from clipseg_cli.modeling.config import ClipSegConfig


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'clipseg_cli.modeling' has no attribute {name!r}")
