"""Job-array shards from the command line: ``batch --shard K/N`` runs one (`run_shard`), and
``clipseg shards OUTPUT_DIR --count N`` says whether all are done, and from the same inputs."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from clipseg_cli.run.inputs import WorkItem
from clipseg_cli.scale.sharding import (
    SHARD_FOLDER,
    Shard,
    forget,
    listing_of,
    marker_path,
    missing_shards,
    other_listings,
    read_lines,
    read_marker,
    record,
    run_key,
    select,
)

if TYPE_CHECKING:
    from clipseg_cli.commands.settings import RunOptions
    from clipseg_cli.scale.ray_batch import RayPlace

PRESENTATION = frozenset({"json_lines", "quiet", "verbose", "force", "batch_size"})  # options that change no file
_OUTPUT_FIELDS = ("mask", "overlay", "cutout", "combined_overlay")  # the JSON fields that name an output file


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


def run_shard(items: list[WorkItem], texts: list[str], run_options: RunOptions, shard: Shard, output_dir: Path,
              on_ray: RayPlace | None = None) -> int:
    """Run one shard of the items as a plain run of them would, and record it.

    A done marker with this run's key saves nothing but the message and the JSON lines: every output is
    still checked against its fingerprint, and stale or missing ones are redone. ``--json`` prints the
    stored lines of the outputs that were kept, marked skipped.

    Returns:
        The exit code: 0 all done (or done before), 1 some image failed.
    """
    from clipseg_cli.commands.settings import execute

    say = ((lambda message: None) if run_options.quiet
           else (lambda message: print(f"clipseg: {message}", file=sys.stderr)))
    mine = select(items, shard, output_dir)
    listing = {"listing": listing_of(items, output_dir), "inputs": len(items)}
    key = run_key(mine, shard, shard_request(texts, run_options), listing["listing"])
    problem = other_listings(output_dir, shard.count, listing["listing"])
    if problem:
        say(problem)
    marker = read_marker(output_dir, shard)
    renamed = marker is not None and marker.get("listing") != listing["listing"]
    stored = read_lines(output_dir, shard)
    earlier = stored if renamed else []
    done = not run_options.force and marker is not None and marker["key"] == key
    if done:
        say(f"shard {shard} is done already ({marker_path(output_dir, shard)}); checking its outputs, "
            "--force redoes it")
    forget(output_dir, shard)
    if not mine:
        if not done:
            say(f"shard {shard} holds none of the {len(items)} image(s); nothing to do")
        record(output_dir, shard, key, listing, [], done=True)
        return 0
    lines: list[str] = []  # every line carries its statistics: a kept output reports those measured when written
    code = execute(mine, texts, run_options, protected=[item.source for item in items], ray=on_ray,
                   collected_lines=lines, measure=True, kept_stats=_measured(stored))
    drop_renamed(earlier, lines)
    record(output_dir, shard, key, listing, lines, done=code == 0)
    return code


def drop_renamed(earlier: list[str], lines: list[str]) -> None:
    """Remove the outputs named by the JSON lines ``earlier`` that ``lines`` (a later run of the same inputs) do not
    name: an input whose name changed (another came with the same stem) left them, and a plain run would not have
    them; only files that still carry our fingerprint go."""
    from clipseg_cli.fingerprint import read_record

    def outputs(found: list[str]) -> set[str]:
        paths = set()
        for line in found:
            try:
                result = json.loads(line)
            except ValueError:
                continue
            if isinstance(result, dict):
                paths.update(result[kind] for kind in _OUTPUT_FIELDS if isinstance(result.get(kind), str))
        return paths

    for name in sorted(outputs(earlier) - outputs(lines)):
        try:
            if read_record(Path(name)) is not None:
                Path(name).unlink()
        except OSError:
            continue


def _measured(stored: list[str]) -> dict[tuple[str, str, str], dict]:
    """The statistics of the masks a shard's stored lines name (written, or kept and measured before).

    Returns:
        By (image, prompt, mask file), the line's coverage, bbox and mean_probability.
    """
    from clipseg_cli.run.targets import STATS_KEYS

    measured = {}
    for line in stored:
        try:
            found = json.loads(line)
        except ValueError:
            continue
        if (isinstance(found, dict) and found.get("status") in ("ok", "skipped") and found.get("coverage") is not None
                and all(isinstance(found.get(key), str) for key in ("image", "prompt", "mask"))):
            measured[(found["image"], found["prompt"], found["mask"])] = {key: found.get(key) for key in STATS_KEYS}
    return measured


def shard_request(texts: list[str], run_options: RunOptions) -> dict[str, object]:
    """What a shard's outputs depend on besides its inputs: the prompts, every setting that changes a file and
    the weights (`checkpoint_digest` of the folder the loader uses, a Hub name's snapshot included).

    Returns:
        A JSON-serialisable dict.
    """
    from clipseg_cli.checkpoints.loading import checkpoint_dir
    from clipseg_cli.fingerprint import checkpoint_digest

    request = {name: value for name, value in asdict(run_options).items() if name not in PRESENTATION}
    folder = checkpoint_dir(run_options.weights, offline=run_options.offline or None, revision=run_options.revision,
                            progress=not run_options.quiet)
    request["checkpoint"] = checkpoint_digest(folder)
    return {"prompts": texts, "settings": request}
