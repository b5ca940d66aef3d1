"""User-facing errors: each says what was wrong and what to do next, in one line."""

from __future__ import annotations

from pathlib import Path


class ClipSegError(Exception):
    """Base of every error meant for the user; the CLI prints it as one line, no traceback."""


class CheckpointError(ClipSegError):
    """A checkpoint is missing, corrupt or does not fit the model."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class ImageError(ClipSegError):
    """An input image cannot be used: not an image, truncated, too large, ..."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class ReaderGone(Exception):
    """Whoever reads stdout closed it (``--json | head -1``): the run stops quietly, exit code 141.

    Not an OSError, so that the command-line parser does not turn it into exit code 1.
    """


def printable(text: str) -> str:
    """Text that encodes as UTF-8 whatever it holds: each byte of a file name that is not UTF-8
    (decoded by Python as a lone surrogate) is written as ``\\xNN``, like Python's backslashreplace.

    Returns:
        `text` itself when it is valid Unicode already.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a surrogate no file name decodes to
            return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text
