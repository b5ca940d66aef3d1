"""``clipseg batch INPUT... -p PROMPT -o DIR``: folders of images, for shell scripts."""

from __future__ import annotations

import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from clipseg_cli.commands import options as o
from clipseg_cli.commands.settings import RayOptions, Settings, check_output_dir, execute, with_settings
from clipseg_cli.errors import ClipSegError
from clipseg_cli.inputs import WorkItem, collect, no_images
from clipseg_cli.shard import Shard, forget, is_done, marker_path, parse_shard, record, run_key, select

SCALE = "Scale out"
PRESENTATION = frozenset({"json", "quiet", "verbose", "force", "batch_size"})  # change no file


def read_prompts_file(path: Path) -> list[str]:
    """Prompts from a UTF-8 text file (a byte-order mark and CRLF line ends are fine): one per line (a
    line ends at \\n, \\r\\n or \\r only); blank lines and lines starting with # are skipped.

    Returns:
        The prompts in file order.
    """
    from clipseg_cli.textlines import split_lines

    try:
        lines = split_lines(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ClipSegError(f"--prompts-file {path}: cannot read ({exc})") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def read_stdin_lines() -> list[str]:
    """The lines of stdin; bytes that are not UTF-8 (a file name from `find`) are kept as os.fsdecode keeps them.

    Returns:
        The lines, with their line ends.
    """
    raw = getattr(sys.stdin, "buffer", None)
    return [os.fsdecode(line) for line in raw] if raw is not None else list(sys.stdin)


@with_settings
def batch(
    inputs: Annotated[list[str], typer.Argument(
        help="Image files and folders; - reads one path per line from stdin.", show_default=False)],
    output_dir: Annotated[str, typer.Option(  # a str: "" must not become "."
        "--output-dir", "-o", rich_help_panel=o.OUTPUT, metavar="DIR",
        help="Folder for the outputs; it mirrors the input tree. It may be inside an input folder.")],
    prompt: Annotated[list[str] | None, typer.Option(
        "--prompt", "-p", rich_help_panel=o.PROMPT, help="What to cut out (repeatable).")] = None,
    prompts_file: Annotated[Path | None, typer.Option(
        "--prompts-file", rich_help_panel=o.PROMPT, help="A file of prompts, one per line (# comments).")] = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Walk subfolders of input folders.")] = False,
    shard: Annotated[str | None, typer.Option(
        "--shard", rich_help_panel=SCALE, metavar="K/N|auto",
        help="Process only shard K of N (from 0), split by a hash of each input's path; auto reads the job "
             "array's index and count (SLURM, Kubernetes indexed Job).")] = None,
    ray: Annotated[bool, typer.Option(
        "--ray", rich_help_panel=SCALE, help="Run on Ray: a local one, or the cluster of --ray-address.")] = False,
    ray_address: Annotated[str | None, typer.Option(
        "--ray-address", rich_help_panel=SCALE, metavar="ADDRESS",
        help="The Ray cluster to run on (implies --ray): auto = the one this machine is part of, "
             "or ray://HOST:10001.")] = None,
    ray_actors: Annotated[int | None, typer.Option(
        "--ray-actors", min=1, rich_help_panel=SCALE,
        help="Ray workers, each with one model (default: one per GPU, else one per CPU).")] = None,
    *,
    settings: Settings,
) -> None:
    """Segment many images with the same prompts; the model is loaded once."""
    folder = check_output_dir(output_dir)
    part = parse_shard(shard) if shard is not None else None
    on_ray = RayOptions(ray_address, ray_actors) if ray or ray_address else None
    texts = list(prompt or []) + (read_prompts_file(prompts_file) if prompts_file else [])
    lines = read_stdin_lines() if "-" in inputs else []
    items = collect(inputs, output_dir=folder, recursive=recursive, stdin=lines)
    if not items:
        if set(inputs) == {"-"} and not any(line.strip() for line in lines):
            if not settings.quiet:
                typer.echo("clipseg: no paths on stdin; nothing to do", err=True)
            raise typer.Exit(0)
        raise ClipSegError(no_images(inputs, recursive))
    if part is None:
        raise typer.Exit(execute(items, texts, settings, ray=on_ray))
    raise typer.Exit(run_shard(items, texts, settings, part, folder, on_ray))


def run_shard(items: list[WorkItem], texts: list[str], settings: Settings, part: Shard, folder: Path,
              on_ray: RayOptions | None) -> int:
    """Run one shard of the items; skip it when its done marker matches, record it when it ends.

    Returns:
        The exit code: 0 all done (or done before), 1 some image failed.
    """
    mine = select(items, part, folder)
    key = run_key(mine, part, shard_request(texts, settings))
    if not settings.force and is_done(folder, part, key):
        if not settings.quiet:
            typer.echo(f"clipseg: shard {part} is done already ({marker_path(folder, part)}); --force redoes it",
                       err=True)
        return 0
    forget(folder, part)
    if not mine:
        if not settings.quiet:
            typer.echo(f"clipseg: shard {part} holds none of the {len(items)} image(s); nothing to do", err=True)
        record(folder, part, key, [], done=True)
        return 0
    lines: list[str] = []
    code = execute(mine, texts, settings, protected=[item.source for item in items], ray=on_ray, kept=lines)
    record(folder, part, key, lines, done=code == 0)
    return code


def shard_request(texts: list[str], settings: Settings) -> dict[str, object]:
    """What a shard's outputs depend on besides its inputs: the prompts and every setting that changes a file.

    Returns:
        A JSON-serialisable dict (a local checkpoint folder adds its `checkpoint_identity`).
    """
    from clipseg_cli.fingerprint import checkpoint_identity

    request = {name: value for name, value in asdict(settings).items() if name not in PRESENTATION}
    if Path(settings.weights).is_dir():
        request["checkpoint"] = checkpoint_identity(Path(settings.weights))
    return {"prompts": texts, "settings": request}

