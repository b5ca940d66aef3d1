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

The names, by what they are for (each written once, in `_EXPORTS`):

- Model: `Segmenter` (load once, embed prompts once, numpy in and out), `ModelSpec` (which model to
  load: ``--weights``, ``--device``, ``--precision``), `load_model` (the bare `ClipSeg` nn.Module).
- Prompts: a text, a PIL image, `visual_prompt(image, mask)` (an example image with its object's
  mask, prepared as the paper does: ``--prompt-mask``), or a `clipseg_cli.prompts.Average` of several.
- Masks: `PostProcess` (threshold, blur, dilate, erode, min-area, invert), `make_mask` (one map to
  one mask), `refine_map` (a map that follows the object's edges: ``--refine guided|matting|sam``).
- Files: `Job` (one CLI run: `Job.segment`, `Job.run`), `OutputPlan` (which files, and the mask steps),
  `Pipeline` (batch size, pixel bound, statistics, threads: ``Job(..., pipeline=Pipeline(batch_size=8))``).
- Your own masks: `evaluate` (the paper's metrics on a manifest, ``clipseg eval``), `train` (fine-tune
  the decoder, ``clipseg train``) with `TrainOptions`.
- Errors: `ClipSegError`, a set-up error with a one-line message.

The rest is imported from its module: `clipseg_cli.run.engine` (`Engine`), `clipseg_cli.run.targets`
(`Targets`, `Result`), `clipseg_cli.run.inputs` (`collect`, `WorkItem`), `clipseg_cli.prompts`
(`build_prompts`, `Average`), `clipseg_cli.postprocess` (`combine`), `clipseg_cli.refine`
(`load_refiner`), `clipseg_cli.checkpoints` (`available_models`, `download`), `clipseg_cli.modeling`
(`ClipSeg`, `ClipSegConfig`).

Names are imported lazily so that ``clipseg --help`` starts without importing torch. The library logs to the
``clipseg`` logger (`logging`) and never prints.
"""

from __future__ import annotations

from importlib import import_module

__version__ = "0.1.0"  # the one place: pyproject.toml reads it ([tool.setuptools.dynamic])

# The library speaks through the "clipseg" logger (fallbacks, one-time preparations, Ray's lost actors) and never
# prints: the command line shows its lines as "clipseg: ..." on stderr; elsewhere warnings reach stderr through
# Python's last-resort handler until the host configures logging. Importing the package changes nothing of the
# host process (no environment variable, no handler).
LOGGER = "clipseg"

_EXPORTS = {  # module: the names it gives the package
    "clipseg_cli.predictor": ("Segmenter", "ModelSpec"),
    "clipseg_cli.checkpoints.loading": ("load_model",),
    "clipseg_cli.imaging.visual_prompt": ("visual_prompt",),
    "clipseg_cli.postprocess": ("PostProcess", "make_mask"),
    "clipseg_cli.refine": ("refine_map",),
    "clipseg_cli.run.job": ("Job",),
    "clipseg_cli.run.engine": ("Pipeline",),
    "clipseg_cli.run.outputs": ("OutputPlan",),
    "clipseg_cli.training.api": ("evaluate", "train"),
    "clipseg_cli.training.trainer": ("TrainOptions",),
    "clipseg_cli.errors": ("ClipSegError",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = [*_MODULE_OF, "__version__"]


def __getattr__(name: str):
    if name in _MODULE_OF:
        return getattr(import_module(_MODULE_OF[name]), name)
    raise AttributeError(f"module 'clipseg_cli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_MODULE_OF])
