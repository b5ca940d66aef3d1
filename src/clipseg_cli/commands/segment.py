"""``clipseg segment IMAGE PROMPT...``: one image, by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from clipseg_cli.commands import options
from clipseg_cli.commands.settings import Settings, check_output_dir, execute, with_settings
from clipseg_cli.constants import OUTPUT_SUFFIXES, TEMP_SUFFIX
from clipseg_cli.errors import ClipSegError
from clipseg_cli.inputs import collect, is_own_output, no_images


@with_settings
def segment(
    image: Annotated[str, typer.Argument(help="The image to segment.", metavar="IMAGE", show_default=False)],
    prompts: Annotated[list[str] | None, typer.Argument(help='What to cut out, e.g. "red car".', show_default=False)]
    = None,
    output_dir: options.OutputDir = None,
    *,
    settings: Settings,
) -> None:
    """Segment one image: writes IMAGE_STEM.PROMPT.mask.png (and .overlay.png) beside it or in -o."""
    check_image_argument(image)
    items = collect([image], output_dir=check_output_dir(output_dir))
    if not items:  # a folder
        raise ClipSegError(no_images([image], recursive=True))  # segment has no -r to suggest
    raise typer.Exit(execute(items, list(prompts or []), settings))


def check_image_argument(image: str) -> None:
    """Refuse what segment cannot mean as its image: "", "-" and our own outputs."""
    if image == "":
        raise ClipSegError('the image path is empty (""); give an image file')
    if image == "-":
        raise ClipSegError("segment reads one image file, not stdin; use `clipseg batch - -p PROMPT -o DIR` "
                           "to read paths from stdin")
    if is_own_output(Path(image)):
        kinds = ", ".join(f"*{suffix}" for suffix in (*OUTPUT_SUFFIXES, TEMP_SUFFIX))
        raise ClipSegError(f"{image} is an output of clipseg ({kinds} files are never inputs); "
                           "rename or copy it to use it as an input")
