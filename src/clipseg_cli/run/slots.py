"""The engine's output order: one slot per image, in input order, holding its results or the futures that write
them, so results are yielded in input order as soon as each image's writes are done."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clipseg_cli.run.targets import Result


@dataclass
class Slot:
    """One item's place in the output order: its results, or the futures that write them.

    open: the image is still decoding, more parts will come.
    pixels: reserved for its decoded image.
    """

    parts: list[list[Result] | Future]
    open: bool = True
    pixels: int = 0

    @property
    def writes(self) -> int:
        return sum(isinstance(part, Future) for part in self.parts)

    def close(self, parts: list[list[Result] | Future]) -> None:
        self.parts.extend(parts)
        self.open = False

    def done(self) -> bool:
        return not self.open and all(part.done() for part in self.parts if isinstance(part, Future))

    def results(self) -> list[Result]:
        """Returns: the results, in target order, once written (the slot's own list: take results from it)."""
        self.parts = [[result for part in self.parts
                       for result in (part.result() if isinstance(part, Future) else part)]]
        return self.parts[0]


def split(count: int, pieces: int) -> list[range]:
    """``range(count)`` cut into at most ``pieces`` contiguous, non-empty ranges."""
    pieces = max(1, min(pieces, count))
    bounds = [round(i * count / pieces) for i in range(pieces + 1)]
    return [range(a, b) for a, b in pairwise(bounds)]
