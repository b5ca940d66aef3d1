"""clipseg: cut objects out of images by a text prompt or an example image, with CLIPSeg.

Public API::

    from PIL import Image
    from clipseg_cli import Segmenter, refine_map
    seg = Segmenter.from_pretrained("CIDAS/clipseg-rd64-refined", device="cpu", precision="fp32")
    probs = seg.predict("photo.jpg", ["red car", "tree"])  # float32 (2, height, width) in [0, 1]
    edges = refine_map(Image.open("photo.jpg"), probs[0], "guided")  # the map along the object's edges

Names are imported lazily so that ``clipseg --help`` starts without importing torch.
"""

from __future__ import annotations

import os
from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Our decode and write threads share the cores with torch's OpenMP workers. Spinning workers
# (libgomp's default) then steal the cores those threads need, and every small op waits for a
# descheduled spinner: 15x slower element-wise ops were measured on 2 cores. Passive workers
# sleep instead. Read once, when torch loads; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_EXPORTS = {
    "ClipSeg": "clipseg_cli.modeling",
    "ClipSegConfig": "clipseg_cli.modeling",
    "Segmenter": "clipseg_cli.predictor",
    "PostProcess": "clipseg_cli.postprocess",
    "refine_map": "clipseg_cli.refine",
    "available_models": "clipseg_cli.checkpoints.registry",
    "download": "clipseg_cli.checkpoints.download",
    "ClipSegError": "clipseg_cli.errors",
}
__all__ = [*_EXPORTS, "__version__"]

if TYPE_CHECKING:
    from clipseg_cli.checkpoints.download import download
    from clipseg_cli.checkpoints.registry import available_models
    from clipseg_cli.errors import ClipSegError
    from clipseg_cli.modeling import ClipSeg, ClipSegConfig
    from clipseg_cli.postprocess import PostProcess
    from clipseg_cli.predictor import Segmenter
    from clipseg_cli.refine import refine_map


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'clipseg_cli' has no attribute {name!r}")
