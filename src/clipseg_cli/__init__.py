"""clipseg: cut objects out of images by a text prompt or an example image, with CLIPSeg.

Everything the command line does, Python can do; the CLI only parses options into these objects.

Probabilities in memory::

    from PIL import Image
    from clipseg_cli import Segmenter, refine_map
    seg = Segmenter.from_pretrained("CIDAS/clipseg-rd64-refined", device="cpu", precision="fp32")
    probs = seg.predict("photo.jpg", ["red car", "tree"])  # float32 (2, height, width) in [0, 1]
    edges = refine_map(Image.open("photo.jpg"), probs[0], "guided")  # the map along the object's edges

Files, exactly as ``clipseg segment`` / ``clipseg batch`` write them (names, pixels, fingerprints,
skipping of finished outputs)::

    from clipseg_cli import Job, OutputPlan, PostProcess
    job = Job(["red car"], templates=["a photo of a {}."], negatives=["wheel"],
              plan=OutputPlan(overlay=False, post=PostProcess(threshold=0.4, blur=2, dilate=8)))
    for result in job.segment(seg, ["photos/"], output_dir="masks", recursive=True):
        print(result.status, result.mask)  # one Result per (image, prompt), the line --json prints

The names, by what they are for:

- Model: `Segmenter` (load once, embed prompts once, numpy in and out), `load_model` (the bare
  `ClipSeg` nn.Module), `available_models`, `download`.
- Prompts: a text, a PIL image, `visual_prompt(image, mask)` (an example image with its object's
  mask, prepared as the paper does: ``--prompt-mask``), or an `Average` of several (``--template``,
  several ``--prompt-image``). `build_prompts` builds them from the CLI's values, `text_prompt` and
  `example_prompt` one at a time.
- Masks: `PostProcess` (threshold, blur, dilate, erode, min-area, invert), `make_mask` (one map to
  one mask), `combine` (union and negatives of in-memory maps), `refine_map` (a map that follows the
  object's edges: ``--refine guided|matting|sam``), `load_refiner` (the same, loaded once for many images).
- Files: `Job` (one CLI run), `OutputPlan` (which files, and the mask steps), `Engine` (batches and
  I/O threads, yielding `Result`), `collect` (inputs to `WorkItem`s, as the CLI names them).
- Your own masks: `evaluate` (the paper's metrics on a manifest, ``clipseg eval``), `train` (fine-tune
  the decoder, ``clipseg train``) with `TrainOptions`.

Names are imported lazily so that ``clipseg --help`` starts without importing torch.
"""

from __future__ import annotations

import os
from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"  # the one place: pyproject.toml reads it ([tool.setuptools.dynamic])

# Our decode and write threads share the cores with torch's OpenMP workers. Spinning workers
# (libgomp's default) then steal the cores those threads need, and every small op waits for a
# descheduled spinner: 15x slower element-wise ops were measured on 2 cores. Passive workers
# sleep instead. Read once, when torch loads; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_EXPORTS = {
    "ClipSeg": "clipseg_cli.modeling",
    "ClipSegConfig": "clipseg_cli.modeling",
    "load_model": "clipseg_cli.checkpoints.loading",
    "available_models": "clipseg_cli.checkpoints.registry",
    "download": "clipseg_cli.checkpoints.download",
    "Segmenter": "clipseg_cli.predictor",
    "Average": "clipseg_cli.prompts",
    "build_prompts": "clipseg_cli.prompts",
    "text_prompt": "clipseg_cli.prompts",
    "example_prompt": "clipseg_cli.prompts",
    "visual_prompt": "clipseg_cli.imaging.visual_prompt",
    "VisualPrompt": "clipseg_cli.imaging.visual_prompt",
    "PostProcess": "clipseg_cli.postprocess",
    "make_mask": "clipseg_cli.postprocess",
    "refine_map": "clipseg_cli.refine",
    "load_refiner": "clipseg_cli.refine",
    "combine": "clipseg_cli.postprocess",
    "OutputPlan": "clipseg_cli.outputs",
    "Engine": "clipseg_cli.engine",
    "Result": "clipseg_cli.targets",
    "Job": "clipseg_cli.job",
    "collect": "clipseg_cli.inputs",
    "WorkItem": "clipseg_cli.inputs",
    "ClipSegError": "clipseg_cli.errors",
    "evaluate": "clipseg_cli.training.api",
    "train": "clipseg_cli.training.api",
    "TrainOptions": "clipseg_cli.training.trainer",
}
__all__ = [*_EXPORTS, "__version__"]

if TYPE_CHECKING:
    from clipseg_cli.checkpoints.download import download
    from clipseg_cli.checkpoints.loading import load_model
    from clipseg_cli.checkpoints.registry import available_models
    from clipseg_cli.engine import Engine
    from clipseg_cli.errors import ClipSegError
    from clipseg_cli.imaging.visual_prompt import VisualPrompt, visual_prompt
    from clipseg_cli.inputs import WorkItem, collect
    from clipseg_cli.job import Job
    from clipseg_cli.modeling import ClipSeg, ClipSegConfig
    from clipseg_cli.outputs import OutputPlan
    from clipseg_cli.postprocess import PostProcess, combine, make_mask
    from clipseg_cli.predictor import Segmenter
    from clipseg_cli.prompts import Average, build_prompts, example_prompt, text_prompt
    from clipseg_cli.refine import load_refiner, refine_map
    from clipseg_cli.targets import Result
    from clipseg_cli.training.api import evaluate, train
    from clipseg_cli.training.trainer import TrainOptions


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'clipseg_cli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
