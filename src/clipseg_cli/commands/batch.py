"""``clipseg batch INPUT... -p PROMPT -o DIR``: folders of images, for shell scripts."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from clipseg_cli.commands import options as o
from clipseg_cli.commands.run import Settings, check_output_dir, execute, with_settings
from clipseg_cli.errors import ClipSegError


def read_prompts_file(path: Path) -> list[str]:
    """Prompts from a text file: one per line; blank lines and lines starting with # are skipped.

    Returns:
        The prompts in file order.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ClipSegError(f"--prompts-file {path}: cannot read ({exc})") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


@with_settings
def batch(
    inputs: Annotated[list[str], typer.Argument(
        help="Image files and folders; - reads one path per line from stdin.", show_default=False)],
    output_dir: Annotated[Path, typer.Option(
        "--output-dir", "-o", rich_help_panel=o.OUTPUT,
        help="Folder for the outputs; it mirrors the input tree. It may be inside an input folder.")],
    prompt: Annotated[list[str] | None, typer.Option(
        "--prompt", "-p", rich_help_panel=o.PROMPT, help="What to cut out (repeatable).")] = None,
    prompts_file: Annotated[Path | None, typer.Option(
        "--prompts-file", rich_help_panel=o.PROMPT, help="A file of prompts, one per line (# comments).")] = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Walk subfolders of input folders.")] = False,
    *,
    settings: Settings,
) -> None:
    """Segment many images with the same prompts; the model is loaded once."""
    from clipseg_cli.inputs import collect

    check_output_dir(output_dir)
    texts = list(prompt or []) + (read_prompts_file(prompts_file) if prompts_file else [])
    stdin = sys.stdin if "-" in inputs else ()
    items = list(collect(inputs, output_dir=output_dir, recursive=recursive, stdin=stdin))
    raise typer.Exit(execute(items, texts, settings))
