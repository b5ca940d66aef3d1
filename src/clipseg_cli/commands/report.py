"""What a run tells the user: JSON lines on stdout; progress, errors and a summary on stderr."""

from __future__ import annotations

import dataclasses
import io
import sys
from collections import Counter
from collections.abc import Mapping
from typing import TextIO

from clipseg_cli.errors import ReaderGone, printable
from clipseg_cli.textlines import json_text


class Reporter:
    """Prints results as they come; stdout carries only JSON so that ``--json | jq`` works."""

    def __init__(self, total: int, *, json_lines: bool, quiet: bool, stdout: TextIO | None = None,
                 stderr: TextIO | None = None, collected_lines: list[str] | None = None,
                 kept_stats: Mapping[tuple[str, str, str], dict] | None = None,
                 shown_as: dict[str, str] | None = None) -> None:
        """collected_lines: a list that receives every result's JSON line, printed or not (a shard's manifest).
        kept_stats: statistics measured before, by (image, prompt, mask file): a skipped result reports them.
        shown_as: the name the user gave for a path the run read instead (``-`` for a private copy of stdin)."""
        self.kept_stats = kept_stats or {}
        self.shown_as = shown_as or {}
        self.json_lines = json_lines
        self.collected_lines = collected_lines
        self.quiet = quiet
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.counts: Counter[str] = Counter()
        self.failed_images: set[str] = set()
        from tqdm import tqdm  # here: the CLI imports this module before any command runs

        self.bar = tqdm(total=total, unit="img", file=self.stderr, dynamic_ncols=True, leave=False,
                        disable=quiet or not _is_terminal(self.stderr))
        self._last_image: str | None = None
        self.redone: list[str] = []  # outputs that existed but were made from other inputs or settings

    def add(self, result) -> None:
        """Record one (image, prompt) result; errors are printed once per image.

        A closed stdout (``--json | head -1``) raises ReaderGone once; later results are only counted.
        """
        self.counts[result.status] += 1
        kept = self.kept_stats.get((result.image, result.prompt, result.mask)) if result.status == "skipped" else None
        if kept is not None:  # the file is the one measured then
            result = dataclasses.replace(result, stats=dict(kept))
        if result.reason and result.status != "skipped":
            self.redone.append(f"{result.mask}: {result.reason}")
        line = json_line(result) if self.json_lines or self.collected_lines is not None else ""
        if self.collected_lines is not None:
            self.collected_lines.append(line)
        if self.json_lines:
            try:  # one write per line: a signal that interrupts it never leaves half a line
                self.stdout.write(line)
                self.stdout.flush()
            except BrokenPipeError as exc:
                self.json_lines = False
                raise ReaderGone from exc
        if result.status == "failed" and result.image not in self.failed_images:
            self.failed_images.add(result.image)
            error = str(result.error)
            for path, name in self.shown_as.items():
                error = error.replace(path, name)
            self.bar.write(printable(f"error: {error}"), file=self.stderr)
        if result.image != self._last_image:
            self._last_image = result.image
            self.bar.update(1)

    def info(self, message: str) -> None:
        if not self.quiet:
            self.bar.write(printable(f"clipseg: {message}"), file=self.stderr)

    def close(self) -> int:
        """Close the bar and print the summary.

        Returns:
            The exit code: 1 when any image failed, else 0.
        """
        self.bar.close()
        if self.redone:  # even with --quiet: earlier files were replaced
            print(f"clipseg: {len(self.redone)} existing output(s) were made from other inputs or settings; "
                  f"redoing them (first: {self.redone[0]})", file=self.stderr)
        written, skipped, failed = self.counts["ok"], self.counts["skipped"], len(self.failed_images)
        self.info(f"{written} mask(s) written, {skipped} skipped (exist; --force redoes them), "
                  f"{failed} image(s) failed")
        return 1 if failed else 0


def json_line(result) -> str:
    """Returns: the JSON line of one result, ending in a newline, valid UTF-8 whatever the file names."""
    record = {key: printable(value) if isinstance(value, str) else value for key, value in result.to_json().items()}
    return json_text(record) + "\n"


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class ClosedStdout(io.TextIOBase):
    """``sys.stdout`` when the shell closed it (``>&-``; Python makes it None): whatever writes to it ends the
    command with one line and exit code 141, as a reader that went away does; a command that writes nothing
    there runs as usual."""

    MESSAGE = "stdout is closed (>&-): redirect it to a file or to /dev/null instead"

    def write(self, text: object) -> int:
        raise ReaderGone(self.MESSAGE)

    @property
    def buffer(self) -> ClosedStdout:  # bytes (a PNG) meet the same end
        return self

    def isatty(self) -> bool:
        return False

    def flush(self) -> None:
        """Nothing was ever written."""


def stdout_is_closed() -> bool:
    """Returns: whether the shell closed stdout (``>&-``), so that a command refuses --json or --stdout at once."""
    return sys.stdout is None or isinstance(sys.stdout, ClosedStdout)
