"""``clipseg batch INPUT... -p PROMPT -o DIR``: folders of images, for shell scripts."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from clipseg_cli.commands import options
from clipseg_cli.commands.settings import (
    RunOptions,
    check_output_dir,
    execute,
    model_spec,
    with_run_options,
)
from clipseg_cli.commands.shards import run_shard
from clipseg_cli.errors import ClipSegError
from clipseg_cli.run.inputs import WorkItem, collect, no_images
from clipseg_cli.scale.sharding import parse_shard

SCALE = "Scale out"


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


def texts_of(prompt: list[str] | None, prompts_file: Path | None) -> list[str]:
    """The prompts of -p, then those of --prompts-file."""
    return list(prompt or []) + (read_prompts_file(prompts_file) if prompts_file else [])


def run_watching(inputs: list[str], folder: Path, recursive: bool, texts: list[str], run_options: RunOptions,
                 refused: dict[str, object]) -> int:
    """Process the input folders' images, then every image that lands or changes in them, until a signal.

    Each round is a plain run over the images that became complete and those whose output name changed
    (``a.jpg`` is named ``a_jpg`` once ``a.png`` lands), named from the whole listing, so names, skips and
    fingerprints are those of a plain rerun; the outputs under a name an input no longer gets are removed.

    Returns:
        Never, but by a signal (it ends the command as it ends a run); 1 where an image failed is what
        the caller would return.
    """
    from clipseg_cli.scale.watch import ready_files

    for flag, value in refused.items():
        if value:
            raise ClipSegError(f"--watch runs here, in one process: leave out {flag}")
    for arg in inputs:
        if not Path(arg).is_dir():
            raise ClipSegError(f"--watch watches folders: {arg} is not a folder")
    folders = [Path(arg) for arg in inputs]
    since_ns = time.time_ns()  # what lands from the listing on is watched for
    items = collect(inputs, output_dir=folder, recursive=recursive)
    rounds = _Rounds(texts, run_options)
    code = rounds.run(items, items) if items else 0
    if not run_options.quiet:
        typer.echo(f"clipseg: watching {len(folders)} folder(s) for new images; Ctrl-C stops", err=True)
    for landed in ready_files(folders, recursive=recursive, skip=folder, since_ns=since_ns):
        listing = collect(inputs, output_dir=folder, recursive=recursive)
        fresh = [item for item in listing if _watched_path(item.source) in landed or rounds.renamed(item)]
        if fresh:
            code = max(code, rounds.run(fresh, listing))
        else:
            rounds.remember(listing)
    return code


def _watched_path(path: Path) -> Path:
    """Returns: the path as the watch names it: its folder's links resolved, not the file's own (a link, a loop)."""
    from clipseg_cli.scale.watch import real_path

    return real_path(path.parent) / path.name


class _Rounds:
    """A watch's runs: one model for all, and the output names each input got, to find those that change."""

    def __init__(self, texts: list[str], run_options: RunOptions) -> None:
        self.texts, self.run_options = texts, run_options
        self.segmenter = None  # loaded once, for the first image that lands, and kept for the whole watch
        self.names: dict[Path, tuple[Path, str]] = {}  # input -> (output folder, stem) it was last named
        self.lines: dict[str, list[str]] = {}  # input (as the JSON lines name it) -> its results' lines

    def renamed(self, item: WorkItem) -> bool:
        named = self.names.get(_watched_path(item.source))
        return named is not None and named != (item.output_dir, item.stem)

    def remember(self, listing: list[WorkItem]) -> None:
        self.names = {_watched_path(item.source): (item.output_dir, item.stem) for item in listing}

    def run(self, items: list[WorkItem], listing: list[WorkItem]) -> int:
        """A plain run of ``items``; afterwards the outputs of their earlier names are removed.

        Returns:
            The run's exit code.
        """
        import json

        from clipseg_cli.commands.shards import drop_renamed

        if items is not listing:  # the first round loads the model as a plain run does; later rounds keep it
            self.segmenter = self.segmenter or model_spec(self.run_options).load(progress=not self.run_options.quiet)
        lines: list[str] = []
        code = execute(items, self.texts, self.run_options, segmenter=self.segmenter, collected_lines=lines)
        by_image: dict[str, list[str]] = {}
        for line in lines:
            by_image.setdefault(json.loads(line)["image"], []).append(line)
        for image, now in by_image.items():
            drop_renamed(self.lines.get(image, []), now)
            self.lines[image] = now
        self.remember(listing)
        return code


MAX_PATH_BYTES = 4096  # Linux's PATH_MAX: a longer line on stdin is no path (and is never read whole)


def read_stdin_lines() -> list[str]:
    """The lines of stdin; bytes that are not UTF-8 (a file name from `find`) are kept as os.fsdecode keeps them.

    Each line is read up to `MAX_PATH_BYTES` (and its line end): stdin that is no list of paths (an image's
    bytes, endless zeros) fails in one line without being read whole.

    Returns:
        The lines, with their line ends.

    Raises:
        ClipSegError: a line is longer than any path.
    """
    raw = getattr(sys.stdin, "buffer", None)
    if raw is None:
        return list(sys.stdin)
    lines = []
    while line := raw.readline(MAX_PATH_BYTES + 3):  # the path, \r\n, and one byte more to tell
        if len(line.rstrip(b"\r\n")) > MAX_PATH_BYTES:
            raise ClipSegError(f"stdin: line {len(lines) + 1} is longer than any path ({MAX_PATH_BYTES} bytes); "
                               "batch - reads one path per line (find DIR -name '*.jpg' | clipseg batch - ...)")
        lines.append(os.fsdecode(line))
    return lines


@with_run_options
def batch(
    inputs: Annotated[list[str], typer.Argument(
        help="Image files and folders; - reads one path per line from stdin.", show_default=False)],
    output_dir: Annotated[str, typer.Option(  # a str: "" must not become "."
        "--output-dir", "-o", rich_help_panel=options.OUTPUT, metavar="DIR",
        help="Folder for the outputs; it mirrors the input tree. It may be inside an input folder.")],
    prompt: Annotated[list[str] | None, typer.Option(
        "--prompt", "-p", rich_help_panel=options.PROMPT, help="What to cut out (repeatable).")] = None,
    prompts_file: Annotated[Path | None, typer.Option(
        "--prompts-file", rich_help_panel=options.PROMPT, help="A file of prompts, one per line (# comments).")] = None,
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
    watch: Annotated[bool, typer.Option(
        "--watch", help="Then keep watching the input folders: each image that lands or changes is processed once "
                        "it is complete. Ctrl-C or SIGTERM stops.")] = False,
    *,
    run_options: RunOptions,
) -> None:
    """Segment many images with the same prompts; the model is loaded once."""
    folder = check_output_dir(output_dir)
    if watch:
        raise typer.Exit(run_watching(inputs, folder, recursive, texts_of(prompt, prompts_file), run_options,
                                      refused={"--shard": shard, "--ray": ray or ray_address}))
    part = parse_shard(shard) if shard is not None else None
    on_ray = None
    if ray or ray_address:
        from clipseg_cli.scale.ray_batch import RayPlace

        on_ray = RayPlace(ray_address, ray_actors, quiet=run_options.quiet)
    texts = texts_of(prompt, prompts_file)
    lines = read_stdin_lines() if "-" in inputs else []
    items = collect(inputs, output_dir=folder, recursive=recursive, stdin=lines)
    if not items:
        if set(inputs) == {"-"} and not any(line.strip() for line in lines):
            if not run_options.quiet:
                typer.echo("clipseg: no paths on stdin; nothing to do", err=True)
            raise typer.Exit(0)
        raise ClipSegError(no_images(inputs, recursive))
    if part is None:
        raise typer.Exit(execute(items, texts, run_options, ray=on_ray))
    raise typer.Exit(run_shard(items, texts, run_options, part, folder, on_ray))
