"""``clipseg shards OUTPUT_DIR --count N``: are all shards of a job array done, and from the same inputs?"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from clipseg_cli.shard import SHARD_FOLDER, missing_shards, other_listings


def shards(
    output_dir: Annotated[Path, typer.Argument(help="The -o folder the shards wrote into.", show_default=False)],
    count: Annotated[int, typer.Option("--count", "-n", help="How many shards the job array had.")],
) -> None:
    """Check that every shard of a --shard K/N run is done, from the same inputs; list the missing ones
    (exit 1 if any)."""
    missing = missing_shards(output_dir, count)
    if missing:
        shown = " ".join(str(index) for index in missing)
        typer.echo(f"{len(missing)} of {count} shard(s) not done: {shown}")
        typer.echo(f"clipseg: rerun them with --shard K/{count}; each done shard leaves "
                   f"{output_dir / SHARD_FOLDER}/shard-K-of-{count}.done", err=True)
        raise typer.Exit(1)
    problem = other_listings(output_dir, count)
    if problem:
        typer.echo(problem)
        raise typer.Exit(1)
    typer.echo(f"all {count} shard(s) done")
