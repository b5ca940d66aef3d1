"""``clipseg segment IMAGE PROMPT...``: one image, by hand."""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from clipseg_cli.commands import options
from clipseg_cli.commands.report import stdout_is_closed
from clipseg_cli.commands.settings import RunOptions, check_output_dir, execute, with_run_options
from clipseg_cli.constants import OUTPUT_SUFFIXES, TEMP_SUFFIX
from clipseg_cli.errors import ClipSegError, ReaderGone
from clipseg_cli.run.inputs import collect, is_own_output, no_images

PIPE_KINDS = ("mask", "soft", "overlay", "cutout")  # what --stdout writes: soft is the map as 8-bit grey


@with_run_options
def segment(
    image: Annotated[str, typer.Argument(help="The image to segment.", metavar="IMAGE", show_default=False)],
    prompts: Annotated[list[str] | None, typer.Argument(
        help='What to cut out, e.g. "red car" (or --prompt-image REF: an example image).', metavar="PROMPT",
        show_default=False)] = None,
    output_dir: options.OutputDir = None,
    stdout: Annotated[str | None, typer.Option(
        "--stdout", rich_help_panel=options.OUTPUT, show_default=False, metavar="|".join(PIPE_KINDS),
        help="Write one PNG (of one prompt) to stdout instead of files; IMAGE may then be - (image bytes on "
             "stdin).")] = None,
    *,
    run_options: RunOptions,
) -> None:
    """Segment one image: writes IMAGE_STEM.PROMPT.mask.png (and .overlay.png) beside it or in -o; with --stdout,
    one PNG to stdout instead (IMAGE may be -: the image's bytes on stdin)."""
    if not prompts and not run_options.prompt_images:
        raise ClipSegError(f"give at least one prompt after the image: clipseg segment {image or 'IMAGE'} PROMPT... "
                           '(e.g. "red car"), or --prompt-image REF')
    if stdout is not None:
        raise typer.Exit(to_stdout(image, list(prompts or []), stdout, output_dir, run_options))
    check_image_argument(image)
    items = collect([image], output_dir=check_output_dir(output_dir))
    if not items:  # a folder
        raise ClipSegError(no_images([image], recursive=True))  # segment has no -r to suggest
    raise typer.Exit(execute(items, list(prompts or []), run_options))


def to_stdout(image: str, texts: list[str], kind: str, output_dir: str | None, run_options: RunOptions) -> int:
    """Segment one image (a file, or ``-``: its bytes on stdin) and write one output PNG to stdout.

    The run is the same as for files, into a private folder; only the chosen PNG leaves it.

    Returns:
        The exit code: 0 written, 1 the image failed (its error is on stderr, stdout stays empty).
    """
    if kind not in PIPE_KINDS:
        raise ClipSegError(f"--stdout {kind!r}: expected one of {', '.join(PIPE_KINDS)}")
    if output_dir is not None:
        raise ClipSegError("--stdout writes no files: leave out -o/--output-dir")
    if run_options.json_lines:
        raise ClipSegError("--stdout carries the PNG: leave out --json")
    if run_options.overlay_combined:
        raise ClipSegError("--stdout writes one PNG of one prompt: leave out --overlay-combined "
                           "(or write files with -o DIR)")
    if len(texts) != 1 and not (texts and run_options.union):
        raise ClipSegError(f"--stdout writes one PNG: give one prompt (or --union), not {len(texts)}")
    if stdout_is_closed():
        raise ClipSegError("--stdout writes the PNG to stdout, which is closed (>&-): redirect it (> out.png) "
                           "or pipe it")
    if sys.stdout.isatty():
        raise ClipSegError("refusing to write a PNG to a terminal: redirect stdout (> out.png) or pipe it")
    with tempfile.TemporaryDirectory(prefix="clipseg-stdout-") as private:
        folder = Path(private)
        if image == "-":
            source = folder / "stdin"
            copy_stdin(source, stdin_limit(run_options.max_pixels))
        else:
            check_image_argument(image)
            source = Path(image)
        items = collect([str(source)], output_dir=folder / "out")
        if not items:
            raise ClipSegError(no_images([image], recursive=True))
        soft = kind == "soft" or (run_options.soft and kind == "cutout")  # soft: the map as the mask file
        wanted = dataclasses.replace(run_options, overlay=kind == "overlay", soft=soft, cutout=kind == "cutout",
                                     force=True)
        code = execute(items, texts, wanted, shown_as={str(source): "- (stdin)"} if image == "-" else None)
        written = sorted((folder / "out").rglob(f"*.{'mask' if kind == 'soft' else kind}.png"))
        if code != 0:
            return code
        if len(written) != 1:  # never an exit code 0 with nothing written
            raise RuntimeError(f"--stdout {kind}: the run wrote {len(written)} such PNGs, not one")
        write_all(written[0].read_bytes())
        return code


STDIN_BYTES_PER_PIXEL = 4  # an uncompressed 8-bit RGBA image (BMP, TIFF): the largest file of an image we take
STDIN_HEADROOM = 1 << 20  # metadata (EXIF, an ICC profile) on top of the pixels
STDIN_BLOCK = 1 << 20


def stdin_limit(max_pixels: int) -> int:
    """Returns: the most bytes ``segment -`` reads from stdin: the file of an image of ``max_pixels`` pixels."""
    return max_pixels * STDIN_BYTES_PER_PIXEL + STDIN_HEADROOM


def copy_stdin(target: Path, limit: int) -> None:
    """Copy stdin's bytes into ``target`` block by block (never all in memory), at most ``limit`` of them.

    Raises:
        ClipSegError: stdin is empty, or holds more than ``limit`` bytes (one line; nothing more is read).
    """
    size = 0
    with open(target, "wb") as stream:
        while block := sys.stdin.buffer.read(min(STDIN_BLOCK, limit + 1 - size)):
            size += len(block)
            if size > limit:
                raise ClipSegError(f"stdin holds more than {limit} bytes, more than an image of --max-pixels pixels "
                                   "takes; pipe one image in (or raise --max-pixels)")
            stream.write(block)
    if size == 0:
        raise ClipSegError("stdin is empty: pipe an image in (cat photo.jpg | clipseg segment - ...)")


def write_all(data: bytes) -> None:
    """Write bytes to stdout, all of them, or raise ReaderGone (exit 141) when its reader went away.

    A pipe's reader that leaves mid-write (``| head -c 10``) makes Python's buffered write return the
    part written so far instead of failing, so the rest is written again until the pipe says EPIPE.
    """
    view = memoryview(data)
    try:
        while view:
            view = view[sys.stdout.buffer.write(view) or 0:]
        sys.stdout.buffer.flush()
    except BrokenPipeError as exc:  # `| head -c 10`, `| true`: the reader is gone
        raise ReaderGone from exc


def check_image_argument(image: str) -> None:
    """Refuse what segment cannot mean as its image: "", "-", our own outputs and a path where nothing is."""
    if image == "":
        raise ClipSegError('the image path is empty (""); give an image file')
    if image == "-":
        raise ClipSegError("segment - reads the image's bytes from stdin and needs --stdout mask|soft|overlay|cutout; "
                           "use `clipseg batch - -p PROMPT -o DIR` to read paths from stdin")
    if is_own_output(Path(image)):
        kinds = ", ".join(f"*{suffix}" for suffix in (*OUTPUT_SUFFIXES, TEMP_SUFFIX))
        raise ClipSegError(f"{image} is an output of clipseg ({kinds} files are never inputs); "
                           "rename or copy it to use it as an input")
    if not Path(image).exists():
        raise ClipSegError(f"{image}: no such file")
