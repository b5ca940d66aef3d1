"""What is written for each image and prompt: names, files, per-mask statistics."""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from clipseg_cli.constants import OUTPUT_KINDS
from clipseg_cli.fingerprint import PNG_KEY, text_sha256
from clipseg_cli.imaging.writing import (
    atomic_write,
    cutout,
    mask_png,
    overlay,
    palette_color,
    png_bytes,
    probability_to_image,
)
from clipseg_cli.postprocess import PostProcess

SLUG_LENGTH = 60
HASH_CHARS = 6
NAME_BYTES = 255  # the file-name limit of ext4, btrfs, APFS, NTFS (UTF-16 units there: fewer than bytes)
COMBINED_LABEL = "all_prompts"  # the combined overlay's label: "_" is never in a prompt's label
COMBINED_KIND = "combined_overlay"  # its key among a result's fingerprint records
LONG_LABEL_BYTES = 96  # what a label keeps when a whole name would pass NAME_BYTES


@dataclass(frozen=True)
class OutputPlan:
    """Which files to write per (image, prompt) and how a probability map becomes a mask.

    mask: always written; binary 0/255 (the mask M), or with ``soft`` the map m as 8-bit grey.
    overlay: the image with M tinted and outlined.
    overlay_combined: one overlay per image with every target's M in its palette colour and a legend
        (`clipseg_cli.run.targets`).
    cutout: RGBA, M (or with ``soft`` m) as alpha.
    M and m are defined in `clipseg_cli.postprocess.mask_and_map`.
    overlay_color: the tint (RGB), default one colour per prompt from `PALETTE`.
    overlay_alpha: its opacity.
    bg_color: lay the cut-out over this RGB or RGBA colour (opaque for RGB) instead of leaving it transparent.
    """

    overlay: bool = True
    soft: bool = False
    cutout: bool = False
    post: PostProcess = field(default_factory=PostProcess)
    overlay_color: tuple[int, int, int] | None = None
    overlay_alpha: float = 0.5
    bg_color: tuple[int, ...] | None = None
    overlay_combined: bool = False

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(kind for kind, on in zip(OUTPUT_KINDS, (True, self.overlay, self.cutout), strict=True) if on)

    @property
    def needs_probabilities(self) -> bool:
        """Soft outputs and blur work on probabilities; plain masks can be thresholded on logits."""
        return self.soft or self.post.blur > 0 or self.post.threshold >= 1

    def settings(self) -> dict[str, object]:
        """Returns: every setting of the plan that changes an output's pixels (for fingerprints)."""
        post = self.post
        return {"threshold": post.threshold, "blur": post.blur, "dilate": post.dilate, "erode": post.erode,
                "min_area": post.min_area, "invert": post.invert, "soft": self.soft}

    def looks(self, kind: str) -> dict[str, object]:
        """Returns: the settings that change only the files of ``kind`` (added to its fingerprint's settings)."""
        if kind == "overlay":  # "outline": overlays before it had none
            return {"overlay_color": list(self.overlay_color) if self.overlay_color else "palette",
                    "overlay_alpha": self.overlay_alpha, "outline": 2}
        if kind == "cutout":  # cut-outs before it kept the background's colours under alpha 0
            return {"bg_color": list(self.bg_color) if self.bg_color else "none"}
        if kind == COMBINED_KIND:  # every prompt in its palette colour: --overlay-color does not apply
            return {"overlay_alpha": self.overlay_alpha, "outline": 2, "legend": "prompt texts"}
        return {}

    def output_kind(self, kind: str) -> str:
        """Returns: what a file of ``kind`` shows: mask, soft mask, overlay, cutout or soft cutout."""
        return f"soft {kind}" if self.soft and kind != "overlay" else kind

    @property
    def needs_full_image(self) -> bool:
        """Overlays and cut-outs need the image's pixels at full size; masks only its size."""
        return self.overlay or self.cutout or self.overlay_combined


def slugify(text: str) -> str:
    """A file-name-safe slug: letters, digits (and their combining marks) of any script, NFC, case-folded;
    every other run of characters becomes one dash; at most 60 characters.

    Returns:
        The slug, possibly empty.
    """
    text = unicodedata.normalize("NFC", text).casefold()
    kept = "".join(c if c.isalnum() or unicodedata.category(c).startswith("M") else "-" for c in text)
    return re.sub(r"-+", "-", kept).strip("-")[:SLUG_LENGTH].strip("-")


def short_hash(text: str) -> str:
    """Returns: the first 6 hex characters of the sha256 of ``text``."""
    return text_sha256(text)[:HASH_CHARS]


def label_for(text: str, key: str | None = None) -> str:
    """The name of a prompt in file names, unique per prompt across runs.

    The slug alone when it gives the text back exactly (dashes read as single spaces:
    "red car" -> ``red-car``); otherwise the slug (cut to fit 60 characters, "prompt" when
    empty) and a dash and `short_hash` of ``key`` (default: the text): "Red Car" ->
    ``red-car-3f9a1c``. A given ``key`` always adds the hash (image prompts, unions, negatives).

    Returns:
        At most 60 characters.
    """
    slug = slugify(text)
    if key is None and slug and slug.replace("-", " ") == text:
        return slug
    base = slug[: SLUG_LENGTH - HASH_CHARS - 1].rstrip("-") or "prompt"
    return f"{base}-{short_hash(text if key is None else key)}"


def output_paths(directory: Path, stem: str, label: str, plan: OutputPlan) -> dict[str, Path]:
    """Where the files of one (image, prompt) go: ``{stem}.{label}.{kind}.png``.

    Names stay within 255 bytes (UTF-8): a long label is cut to 96 bytes and then a long stem to
    what is left, each on a character boundary followed by a dash and the hash of the full text.

    Returns:
        Path per output kind of the plan.
    """
    room = NAME_BYTES - 2 - max(len(f"{kind}.png") for kind in OUTPUT_KINDS)
    if _size(stem) + _size(label) > room:
        label = _fit(label, LONG_LABEL_BYTES)
        stem = _fit(stem, room - _size(label))
    return {kind: directory / f"{stem}.{label}.{kind}.png" for kind in plan.kinds}


def combined_path(directory: Path, stem: str) -> Path:
    """Where the combined overlay of one image goes: ``{stem}.all_prompts.overlay.png``.

    No prompt's label contains ``_`` (`slugify`), so no prompt's file can take this name; a long
    stem is cut as in `output_paths` to keep the name within 255 bytes.

    Returns:
        The path.
    """
    suffix = f".{COMBINED_LABEL}.overlay.png"
    return directory / f"{_fit(stem, NAME_BYTES - _size(suffix))}{suffix}"


def _size(text: str) -> int:
    return len(os.fsencode(text))


def _fit(text: str, limit: int) -> str:
    """Returns: ``text``, or when over ``limit`` bytes its start and a dash and its hash, within the limit."""
    if _size(text) <= limit:
        return text
    kept, used = [], HASH_CHARS + 1
    for char in text:
        used += _size(char)
        if used > limit:
            break
        kept.append(char)
    return "".join(kept) + "-" + short_hash(text)


def write_outputs(image: Image.Image | None, mask: np.ndarray, soft: np.ndarray | None, paths: dict[str, Path],
                  plan: OutputPlan, records: dict[str, str] | None = None, *,
                  foreground: np.ndarray | None = None, index: int = 0) -> None:
    """Write the files of one mask atomically (the bytes of `encode_outputs`, one file at a time).

    Arguments:
        paths: where each kind of `encode_outputs` goes (the kinds of the plan).
    """
    paths["mask"].parent.mkdir(parents=True, exist_ok=True)
    for kind, png in encode_outputs(image, mask, soft, plan, records, foreground=foreground, index=index):
        atomic_write(paths[kind], lambda handle, png=png: handle.write(png))


def encode_outputs(image: Image.Image | None, mask: np.ndarray, soft: np.ndarray | None, plan: OutputPlan,
                   records: dict[str, str] | None = None, *, foreground: np.ndarray | None = None,
                   index: int = 0) -> Iterator[tuple[str, bytes]]:
    """The PNG files of one mask, in memory, one at a time: what `write_outputs` writes and the server sends.

    Arguments:
        image: the RGB image at full size (needed only for overlays and cut-outs).
        mask: HxW bool, the final mask M.
        soft: HxW float32, the map m of `mask_and_map`
            (needed only when ``plan.soft``).
        records: per kind, the fingerprint record to store in the file (see `fingerprint`).
        foreground: HxWx3 uint8 colours for the cut-out (matting's estimated foreground); default the image's.
        index: the prompt's place among the image's prompts: picks its overlay colour from `PALETTE`.

    Returns:
        (kind, PNG bytes) for each kind of the plan, in `OUTPUT_KINDS` order.
    """
    records = records or {}

    def text(kind: str) -> dict[str, str] | None:
        return {PNG_KEY: records[kind]} if kind in records else None

    for kind in plan.kinds:
        if kind == "mask" and plan.soft:
            yield kind, png_bytes(probability_to_image(soft), text=text(kind))
        elif kind == "mask":
            yield kind, mask_png(mask, text(kind))
        elif kind == "overlay":
            color = plan.overlay_color or palette_color(index)
            yield kind, png_bytes(overlay(image, mask, color, plan.overlay_alpha), text=text(kind))
        else:
            colours = image if foreground is None else Image.fromarray(foreground)
            yield kind, png_bytes(cutout(colours, soft if plan.soft else mask, plan.bg_color), text=text(kind))
