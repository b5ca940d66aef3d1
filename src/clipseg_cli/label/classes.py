"""Classes of a dataset: ``-p car`` names a class by its prompt, ``-p "car=red car,automobile"`` gives a class
several prompts (their union, as ``clipseg batch --union`` makes it); and the content-hash splits."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from clipseg_cli.errors import ClipSegError

SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class LabelClass:
    """One class of the dataset: its name and the prompts whose union is its mask."""

    name: str
    prompts: tuple[str, ...]


def parse_classes(specs: Sequence[str]) -> list[LabelClass]:
    """Classes from ``-p`` values: ``NAME=PROMPT[,PROMPT...]`` or a prompt that is its own name.

    Returns:
        The classes in given order.

    Raises:
        ClipSegError: no class, an empty name or prompt, or two classes whose names collide (equal
            once case and spaces are folded: file formats and trainers treat them as one).
    """
    if not specs:
        raise ClipSegError("give at least one class: -p car, or -p \"car=red car,automobile\"")
    classes, seen = [], {}
    for spec in specs:
        name, sep, rest = spec.partition("=")
        prompts = tuple(p.strip() for p in rest.split(",")) if sep else (spec.strip(),)
        name = name.strip()
        if not name or not all(prompts):
            raise ClipSegError(f"-p {spec!r}: give a class as PROMPT or NAME=PROMPT[,PROMPT...], with no empty part")
        folded = " ".join(name.casefold().split())
        if folded in seen:
            raise ClipSegError(f"-p {spec!r}: class name {name!r} collides with {seen[folded]!r}; "
                               "give each class its own name (NAME=PROMPT,...)")
        seen[folded] = name
        classes.append(LabelClass(name, tuple(dict.fromkeys(prompts))))
    return classes


@dataclass(frozen=True)
class Splits:
    """Named fractions that sum to 1 (train, val, test)."""

    names: tuple[str, ...]
    fractions: tuple[float, ...]

    def of(self, content_sha256: str) -> str:
        """The split of an image, from the sha256 of its bytes: a rerun, or a run with images added,
        never moves an image from one split to another.

        Returns:
            The split's name.
        """
        position = int(content_sha256[:16], 16) / 2**64
        total = 0.0
        for name, fraction in zip(self.names, self.fractions, strict=True):
            total += fraction
            if position < total:
                return name
        return next(name for name, fraction in zip(self.names[::-1], self.fractions[::-1], strict=True) if fraction)

    def __str__(self) -> str:
        return ",".join(f"{fraction:g}" for fraction in self.fractions)


def parse_splits(spec: str) -> Splits:
    """``--split 0.8,0.1,0.1``: train, val and test fractions (one or two numbers: train, or train and val).

    Raises:
        ClipSegError: not numbers, more than three, a negative one, or a sum other than 1.
    """
    try:
        fractions = tuple(float(part) for part in spec.split(","))
    except ValueError:
        raise ClipSegError(f"--split {spec!r}: give fractions separated by commas, e.g. 0.8,0.1,0.1") from None
    if not 1 <= len(fractions) <= len(SPLIT_NAMES):
        raise ClipSegError(f"--split {spec!r}: give 1 to 3 fractions (train, val, test)")
    if any(not math.isfinite(f) or f < 0 for f in fractions):
        raise ClipSegError(f"--split {spec!r}: fractions must be numbers from 0 to 1")
    if not math.isclose(sum(fractions), 1.0, abs_tol=1e-9):
        raise ClipSegError(f"--split {spec!r}: the fractions sum to {sum(fractions):g}; they must sum to 1")
    if fractions[0] == 0:
        raise ClipSegError(f"--split {spec!r}: the train fraction must be above 0")
    return Splits(SPLIT_NAMES[: len(fractions)], fractions)


def classes_key(classes: Sequence[LabelClass]) -> str:
    """Returns: a text that tells class lists apart (names and prompts, in order), for fingerprints."""
    return "\n".join(f"{c.name}={','.join(c.prompts)}" for c in classes)
