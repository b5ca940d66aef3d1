"""``clipseg segment IMAGE PROMPT...``: one image, by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from clipseg_cli.commands import options as o
from clipseg_cli.commands.run import Settings, check_output_dir, execute


def segment(
    image: Annotated[Path, typer.Argument(help="The image to segment.", show_default=False)],
    prompts: Annotated[list[str] | None, typer.Argument(help='What to cut out, e.g. "red car".', show_default=False)]
    = None,
    output_dir: o.OutputDir = None,
    weights: o.Weights = o.DEFAULTS["weights"],
    device: o.Device = "auto",
    precision: o.Precision = "auto",
    revision: o.Revision = None,
    offline: o.Offline = False,
    overlay: o.Overlay = True,
    soft: o.Soft = False,
    cutout: o.Cutout = False,
    force: o.Force = False,
    json: o.Json = False,
    quiet: o.Quiet = False,
    verbose: o.Verbose = False,
    max_pixels: o.MaxPixels = o.DEFAULTS["max_pixels"],
    threshold: o.Threshold = o.DEFAULTS["threshold"],
    blur: o.Blur = 0.0,
    dilate: o.Dilate = 0,
    erode: o.Erode = 0,
    min_area: o.MinArea = 0,
    invert: o.Invert = False,
    union: o.Union = False,
    negative: o.Negative = None,
    template: o.Template = None,
    prompt_image: o.PromptImage = None,
    prompt_mask: o.PromptMask = None,
) -> None:
    """Segment one image: writes IMAGE_STEM.PROMPT.mask.png (and .overlay.png) beside it or in -o."""
    from clipseg_cli.inputs import collect

    check_output_dir(output_dir)
    settings = Settings(**{k: v for k, v in locals().items() if k in Settings.__dataclass_fields__})
    items = list(collect([str(image)], output_dir=output_dir))
    raise typer.Exit(execute(items, list(prompts or []), settings))
