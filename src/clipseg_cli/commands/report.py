"""What a run tells the user: JSON lines on stdout; progress, errors and a summary on stderr."""

from __future__ import annotations

import json
import sys
from collections import Counter
from typing import TextIO

from tqdm import tqdm


class Reporter:
    """Prints results as they come; stdout carries only JSON so that ``--json | jq`` works."""

    def __init__(self, total: int, *, json_lines: bool, quiet: bool, stdout: TextIO | None = None,
                 stderr: TextIO | None = None) -> None:
        self.json_lines = json_lines
        self.quiet = quiet
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.counts: Counter[str] = Counter()
        self.failed_images: set[str] = set()
        self.bar = tqdm(total=total, unit="img", file=self.stderr, dynamic_ncols=True, leave=False,
                        disable=quiet or not _is_terminal(self.stderr))
        self._last_image: str | None = None
        self.redone: list[str] = []  # outputs that existed but were made from other inputs or settings

    def add(self, result) -> None:
        """Record one (image, prompt) result; errors are printed once per image."""
        self.counts[result.status] += 1
        if result.reason and result.status != "skipped":
            self.redone.append(f"{result.mask}: {result.reason}")
        if self.json_lines:
            print(json.dumps(result.to_json(), ensure_ascii=False), file=self.stdout, flush=True)
        if result.status == "failed" and result.image not in self.failed_images:
            self.failed_images.add(result.image)
            self.bar.write(f"error: {result.error}", file=self.stderr)
        if result.image != self._last_image:
            self._last_image = result.image
            self.bar.update(1)

    def info(self, message: str) -> None:
        if not self.quiet:
            self.bar.write(f"clipseg: {message}", file=self.stderr)

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


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
