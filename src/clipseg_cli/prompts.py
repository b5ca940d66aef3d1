"""Prompts as the command line builds them: texts (averaged over templates), example images (with the
paper's mask preparation), and the checks a prompt, a negative or a template must pass.

A prompt is a text, an example image (a PIL image), an example image with its object's mask (a
`VisualPrompt`), or an `Average` of several of these. `build_prompts` turns the values of
``--template``, ``--prompt-image`` and ``--prompt-mask`` into the prompts and names that
`clipseg_cli.run.engine.Engine` takes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from clipseg_cli.constants import DEFAULT_MAX_PIXELS
from clipseg_cli.errors import ClipSegError, printable
from clipseg_cli.imaging.decode import open_image
from clipseg_cli.imaging.visual_prompt import VisualPrompt, visual_prompt

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class Average:
    """A prompt whose embedding is the average of its parts' embeddings: one text in several
    templates, or several example images of one kind of object.

    parts: texts, example images or VisualPrompts (at least one).
    """

    parts: tuple[str | Image.Image | VisualPrompt, ...]

    def __post_init__(self) -> None:
        if not self.parts:
            raise ClipSegError("an Average needs at least one part")


Prompt = str | Image.Image | VisualPrompt | Average  # a text, an example image (with its mask), or an average


def text_prompt(text: str, templates: Sequence[str] = ()) -> str | Average:
    """A text prompt, or with templates the average of the text put in each (``--template``).

    ``{}`` is the only placeholder; other braces are literal text.

    Returns:
        ``text`` itself without templates, else an Average of the filled-in templates.
    """
    return Average(tuple(template.replace("{}", text) for template in templates)) if templates else text


def example_prompt(images: Sequence[PathLike], masks: Sequence[PathLike] = (), *,
                   max_pixels: int = DEFAULT_MAX_PIXELS) -> Prompt:
    """One prompt from example image files (``--prompt-image``), each with its object's mask file
    (``--prompt-mask``) when masks are given; several examples are averaged.

    Returns:
        The example image, its VisualPrompt, or the Average of several.
    """
    if masks and len(masks) != len(images):
        raise ClipSegError(f"give one --prompt-mask per --prompt-image ({len(images)} images, {len(masks)} masks)")
    if not images:
        raise ClipSegError("give at least one --prompt-image")

    def decode(path: PathLike) -> Image.Image:
        return open_image(path, max_pixels=max_pixels).image

    examples = [visual_prompt(decode(image), decode(mask)) if mask else decode(image)
                for image, mask in zip(images, masks or [None] * len(images), strict=True)]
    return Average(tuple(examples)) if len(examples) > 1 else examples[0]


def example_name(images: Sequence[PathLike]) -> str:
    """Returns: how an example prompt is shown and named: ``image`` and the stems of its files."""
    return "image " + " ".join(Path(image).stem for image in images)


def build_prompts(
    texts: Sequence[str],
    *,
    templates: Sequence[str] = (),
    prompt_images: Sequence[PathLike] = (),
    prompt_masks: Sequence[PathLike] = (),
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[list[Prompt], list[str]]:
    """The prompts of a run and their names, as the command line builds them: each text (with the
    templates averaged), then one prompt of all example images, when there are any.

    Returns:
        (prompts, names): names are the texts, and ``image <stems>`` for the examples.
    """
    prompts: list[Prompt] = [text_prompt(text, templates) for text in texts]
    names = list(texts)
    if prompt_images or prompt_masks:
        prompts.append(example_prompt(prompt_images, prompt_masks, max_pixels=max_pixels))
        names.append(example_name(prompt_images))
    if not prompts:
        raise ClipSegError("give at least one prompt (text, -p/--prompt, --prompts-file or --prompt-image)")
    return prompts, names


def check_texts(texts: Sequence[str], *, negatives: Sequence[str] = (), templates: Sequence[str] = ()) -> None:
    """Refuse prompts, negatives and templates that are not valid UTF-8, and templates without one ``{}``.

    Raises:
        ClipSegError: naming the option and the text.
    """
    for option, values in (("prompt", texts), ("--negative", negatives), ("--template", templates)):
        for text in values:
            check_text(option, text)
    for template in templates:
        if template.count("{}") != 1:
            raise ClipSegError(f"--template {template!r} must contain {{}} exactly once")


def check_text(option: str, text: str) -> None:
    """Refuse a text that is not valid UTF-8: argv bytes that are not arrive as surrogate escapes."""
    shown = printable(text)
    if shown is not text:
        raise ClipSegError(f'{option} "{shown}" is not valid UTF-8 (the bad bytes are shown as \\xNN); '
                           "give it as UTF-8 text (check the terminal's or the script's encoding)")
