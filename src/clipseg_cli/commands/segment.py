"""``clipseg segment IMAGE PROMPT...``: one image, by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from clipseg_cli.commands import options as o
from clipseg_cli.commands.run import Settings, check_output_dir, execute, with_settings


@with_settings
def segment(
    image: Annotated[Path, typer.Argument(help="The image to segment.", show_default=False)],
    prompts: Annotated[list[str] | None, typer.Argument(help='What to cut out, e.g. "red car".', show_default=False)]
    = None,
    output_dir: o.OutputDir = None,
    *,
    settings: Settings,
) -> None:
    """Segment one image: writes IMAGE_STEM.PROMPT.mask.png (and .overlay.png) beside it or in -o."""
    from clipseg_cli.inputs import collect

    check_output_dir(output_dir)
    items = list(collect([str(image)], output_dir=output_dir))
    raise typer.Exit(execute(items, list(prompts or []), settings))
