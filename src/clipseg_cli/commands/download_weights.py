"""``clipseg download-weights [NAME...]``: fetch published checkpoints ahead of time."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from clipseg_cli.commands import options
from clipseg_cli.constants import DEFAULT_MODEL


def download_weights(
    names: Annotated[list[str] | None, typer.Argument(
        help=f"Checkpoints to fetch: published names, Hub ids (owner/name), or checkpoint folders, which are "
             f"only checked (and prepared with --prepare) [default: {DEFAULT_MODEL}].", metavar="NAME|DIR",
        show_default=False)] = None,
    list_: Annotated[bool, typer.Option("--list", help="Show the known checkpoints and exit.")] = False,
    output_dir: Annotated[Path | None, typer.Option(
        "--output-dir", "-o", metavar="DIR",
        help="Also write a self-contained copy here (loadable with --weights DIR); with several names, one subfolder "
             "per name.")] = None,
    prepare: Annotated[bool, typer.Option(
        "--prepare", help="Also prepare the model for this CPU now, for --precision auto and fast (the "
                          "one-time ONNX export that a first run would do, then the int8 graph, or the bf16 "
                          "programs on CPUs with AMX), so that the tasks of a job array do not all do it at "
                          "once.")] = False,
    revision: options.Revision = None,
    quiet: options.Quiet = False,
) -> None:
    """Fetch checkpoints into the Hugging Face cache (safetensors and small files; never pickles); with --prepare,
    make them ready for this CPU (a checkpoint folder too)."""
    from clipseg_cli.checkpoints.registry import REGISTRY, SAM_REGISTRY

    if list_:
        for info in [*REGISTRY.values(), *SAM_REGISTRY.values()]:
            default = " (default)" if info.hub_id == DEFAULT_MODEL else ""
            typer.echo(f"{info.hub_id:<28} {info.size_mb:>5} MB  {info.description}{default}")
        raise typer.Exit(0)
    from clipseg_cli.checkpoints.download import download

    names = names or [DEFAULT_MODEL]
    for name in names:
        target = output_dir / name.rsplit("/", 1)[-1] if output_dir and len(names) > 1 else output_dir
        path = download(name, revision=revision, output_dir=target, progress=not quiet)
        if prepare:
            from clipseg_cli.backends import prepare_for_cpu

            prepare_for_cpu(path, progress=not quiet)
        typer.echo(str(path))
