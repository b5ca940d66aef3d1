"""The network: CLIP towers from transformers and our own decoder, one part per file."""

from clipseg_cli.modeling.clipseg import ClipSeg
from clipseg_cli.modeling.config import ClipSegConfig

__all__ = ["ClipSeg", "ClipSegConfig"]
