"""``clipseg video INPUT... -p PROMPT -o DIR``: masks, overlays and cut-outs of videos, with their sound."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Annotated, get_type_hints

import typer

from clipseg_cli.commands.batch import batch, texts_of
from clipseg_cli.commands.settings import RunOptions, check_output_dir, job_from_options, model_spec, with_run_options
from clipseg_cli.errors import ClipSegError, ReaderGone, printable

VIDEO = "Video"
_BATCH = get_type_hints(batch.__wrapped__, include_extras=True)  # batch's own options, defined once there
OutputDir, Prompt, PromptsFile = _BATCH["output_dir"], _BATCH["prompt"], _BATCH["prompts_file"]
Recursive, ShardOption = _BATCH["recursive"], _BATCH["shard"]


@with_run_options
def video(
    inputs: Annotated[list[str], typer.Argument(help="Video files and folders of them.", show_default=False)],
    output_dir: OutputDir,
    prompt: Prompt = None,
    prompts_file: PromptsFile = None,
    recursive: Recursive = False,
    shard: ShardOption = None,
    smooth: Annotated[float, typer.Option(
        "--smooth", min=0.0, max=0.95, rich_help_panel=VIDEO, metavar="S",
        help="Average each map over time, weight S of the past (e.g. 0.8: noise averaged, moving objects followed "
             "at once), restarting at scene cuts. 0: off, each frame's mask exactly as `clipseg segment` makes it.")]
    = 0.0,
    cutout_format: Annotated[str, typer.Option(
        "--cutout-format", rich_help_panel=VIDEO, metavar="mov|webm", autocompletion=lambda: ["mov", "webm"],
        help="The --cutout's file: mov (ProRes 4444 with alpha: editors) or webm (VP9 with alpha: browsers).")] = "mov",
    audio: Annotated[bool, typer.Option(
        "--audio/--no-audio", rich_help_panel=VIDEO, help="Copy the sound into the overlay and cut-out.")] = True,
    png_frames: Annotated[bool, typer.Option(
        "--png-frames", rich_help_panel=VIDEO,
        help="Also write each output as PNG files, {stem}.{label}.{kind}.frames/000000.png ..., upright, for tools "
             "that want files.")] = False,
    chunk_frames: Annotated[int, typer.Option(
        "--chunk-frames", min=1, rich_help_panel=VIDEO,
        help="Frames per resumable chunk (a killed run resumes from its last finished chunk).")] = 240,
    *,
    run_options: RunOptions,
) -> None:
    """Segment every frame of videos; masks (lossless), overlays and cut-outs keep the timing and the sound."""
    from clipseg_cli.scale.sharding import parse_shard, select
    from clipseg_cli.video import VideoOptions, collect_videos, run_videos

    folder = check_output_dir(output_dir)
    texts = texts_of(prompt, prompts_file)
    part = parse_shard(shard) if shard is not None else None
    items = collect_videos(inputs, output_dir=folder, recursive=recursive)
    if not items:
        hint = "; add -r to walk subfolders" if not recursive else ""
        raise ClipSegError(f"no videos to process in {' '.join(inputs[:3])}{hint}")
    if part is not None:
        items = select(items, part, folder)
    job = job_from_options(texts, run_options)
    video_options = VideoOptions(smooth=smooth, cutout_format=cutout_format, audio=audio, chunk_frames=chunk_frames,
                                 png_frames=png_frames)
    reporter = VideoReporter(run_options)
    results = run_videos(job, model_spec(run_options), items, video_options, progress=reporter.bar,
                         started=reporter.started)
    try:
        for result in results:
            reporter.add(result)
    finally:
        code = reporter.close()
    raise typer.Exit(code)


class VideoReporter:
    """Prints what a video run does: JSON lines on stdout; a bar per video, errors and a summary on stderr."""

    def __init__(self, run_options: RunOptions) -> None:
        self.json_lines, self.quiet, self.verbose = run_options.json_lines, run_options.quiet, run_options.verbose
        self.counts: Counter[str] = Counter()
        self.failed: set[str] = set()
        self.videos: set[str] = set()
        self.frames = 0
        self.began = False

    def bar(self, item, info):
        """Returns: the progress bar of one video: frames, frames per second and time left."""
        from tqdm import tqdm

        self.began = True
        return tqdm(total=info.frames, unit="frame", desc=printable(item.source.name)[:30], file=sys.stderr,
                    dynamic_ncols=True, leave=False, disable=self.quiet or not _is_terminal(sys.stderr))

    def started(self, description: str) -> None:
        self.began = True
        if self.verbose and not self.quiet:
            print(f"clipseg: {description}", file=sys.stderr)

    def add(self, result) -> None:
        from clipseg_cli.commands.report import json_line

        self.began = True
        self.counts[result.status] += 1
        if result.video not in self.videos:
            self.videos.add(result.video)
            self.frames += result.frames or 0
        if self.json_lines:
            try:
                sys.stdout.write(json_line(result))
                sys.stdout.flush()
            except BrokenPipeError as exc:
                self.json_lines = False
                raise ReaderGone from exc
        if result.status == "failed" and result.video not in self.failed:
            self.failed.add(result.video)
            print(printable(f"error: {result.error}"), file=sys.stderr)
        if result.reason and result.status == "ok" and not self.quiet:
            print(printable(f"clipseg: {Path(result.mask).name} redone: {result.reason}"), file=sys.stderr)

    def close(self) -> int:
        """Print the summary. Returns: the exit code, 1 when a video failed."""
        if self.began and not self.quiet:
            print(f"clipseg: {len(self.videos)} video(s), {self.frames} frame(s) segmented; "
                  f"{self.counts['ok']} output set(s) written, {self.counts['skipped']} skipped (up to date), "
                  f"{len(self.failed)} video(s) failed", file=sys.stderr)
        return 1 if self.failed else 0


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
