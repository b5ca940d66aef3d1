"""Options shared by several commands, each defined once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from clipseg_cli.checkpoints.registry import available_models
from clipseg_cli.runtime import DEVICES, PRECISIONS

MODEL = "Model"
OUTPUT = "Output"
MASK = "Mask post-processing"
PROMPT = "Prompts"
REFINE = "Edges"

Weights = Annotated[str, typer.Option(
    "--weights", "-w", rich_help_panel=MODEL, metavar="NAME|DIR",
    help=f"Checkpoint: a published name ({', '.join(available_models())}), "
         "or a directory from `clipseg download-weights --output-dir`.")]
Device = Annotated[str, typer.Option(
    "--device", rich_help_panel=MODEL, metavar="|".join(DEVICES), autocompletion=lambda: list(DEVICES),
    help="Where the model runs. auto picks a GPU when there is one.")]
Precision = Annotated[str, typer.Option(
    "--precision", rich_help_panel=MODEL, metavar="|".join(PRECISIONS), autocompletion=lambda: list(PRECISIONS),
    help="auto: the exact class on every machine (fp32: ONNX Runtime on CPUs, "
         "GPUs without TF32), the same masks wherever it runs. fast: bf16 on CPUs with AMX, int8 on other CPUs "
         "(AVX512-BF16 without AMX too), fp16 on GPUs; masks about 99 % (bf16, fp16) or 98 % (int8) equal to "
         "exact's. fp32: the reference computation on torch, bit for bit.")]
Revision = Annotated[str | None, typer.Option(
    "--revision", rich_help_panel=MODEL, help="Hub branch, tag or commit of the weights.")]
Offline = Annotated[bool, typer.Option(
    "--offline", rich_help_panel=MODEL, help="Never download; use only cached weights (also HF_HUB_OFFLINE=1).")]
BatchSize = Annotated[int | None, typer.Option(
    "--batch-size", min=1, rich_help_panel=MODEL, help="Images per model call [default: 4 on CPU, 16 on GPU].")]

OutputDir = Annotated[str | None, typer.Option(  # a str: "" must not become "."
    "--output-dir", "-o", rich_help_panel=OUTPUT, metavar="DIR",
    help="Folder for the outputs [default: beside each image].")]
Overlay = Annotated[bool, typer.Option(
    "--overlay/--no-overlay", rich_help_panel=OUTPUT, help="Also write the image with the mask tinted.")]
OverlayCombined = Annotated[bool, typer.Option(
    "--overlay-combined", rich_help_panel=OUTPUT,
    help="Also write one overlay per image, {stem}.all_prompts.overlay.png: every prompt's mask in its colour, "
         "with a legend of the prompts.")]
Soft = Annotated[bool, typer.Option(
    "--soft", rich_help_panel=OUTPUT, help="Write the probability as 8-bit grey instead of the binary mask.")]
Cutout = Annotated[bool, typer.Option(
    "--cutout", rich_help_panel=OUTPUT,
    help="Also write an RGBA cut-out with the mask as alpha (colour 0 where alpha is 0).")]


def _color(with_alpha: bool) -> Callable[[str | None], tuple[int, ...] | None]:
    def parse(value: str | None) -> tuple[int, ...] | None:
        from clipseg_cli.imaging.writing import parse_color  # not at import: --help stays instant

        try:
            return None if value is None else parse_color(value, with_alpha=with_alpha)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    return parse


BgColor = Annotated[str | None, typer.Option(  # the command receives the parsed colour, a tuple
    "--bg-color", rich_help_panel=OUTPUT, metavar="R,G,B[,A]|NAME", callback=_color(True),
    help="Lay the cut-out on this colour (e.g. white, or 0,177,64): opaque, or with alpha A.")]
OverlayColor = Annotated[str | None, typer.Option(  # the command receives the parsed colour, a tuple
    "--overlay-color", rich_help_panel=OUTPUT, metavar="R,G,B|NAME", callback=_color(False),
    help="Tint every overlay with this colour [default: one colour-blind-safe colour per prompt].")]
OverlayAlpha = Annotated[float, typer.Option(
    "--overlay-alpha", min=0.0, max=1.0, rich_help_panel=OUTPUT, help="Opacity of the overlay's tint.")]
Force = Annotated[bool, typer.Option(
    "--force", "-f", rich_help_panel=OUTPUT, help="Redo outputs that already exist (they are skipped otherwise).")]
Json = Annotated[bool, typer.Option(
    "--json", rich_help_panel=OUTPUT, help="Print one JSON object per (image, prompt) on stdout.")]
Quiet = Annotated[bool, typer.Option(
    "--quiet", "-q", rich_help_panel=OUTPUT, help="No progress bar or summary; errors are still printed.")]
Verbose = Annotated[bool, typer.Option(
    "--verbose", "-v", rich_help_panel=OUTPUT, help="Say which device, precision and batch size were chosen.")]
MaxPixels = Annotated[int, typer.Option(
    "--max-pixels", min=1, rich_help_panel=OUTPUT,
    help="Refuse images with more pixels than this, before decoding them (decompression bombs).")]

def _fraction(value: float) -> float:
    """A number in [0, 1]; NaN would fail a range check with a misleading bound."""
    if value != value:
        raise typer.BadParameter("nan is not a number; give a number from 0 to 1")
    if not 0.0 <= value <= 1.0:
        raise typer.BadParameter(f"{value} is not in the range 0 to 1")
    return value


Threshold = Annotated[float, typer.Option(
    "--threshold", "-t", metavar="FLOAT 0..1", rich_help_panel=MASK, callback=_fraction,
    help="A pixel is in the mask where its probability is >= this.")]
Blur = Annotated[float, typer.Option(
    "--blur", min=0.0, rich_help_panel=MASK, metavar="SIGMA",
    help="Gaussian blur of the probability map before the threshold, in pixels.")]
Dilate = Annotated[int, typer.Option(
    "--dilate", min=0, rich_help_panel=MASK, metavar="PX", help="Grow the mask by PX pixels on every side.")]
Erode = Annotated[int, typer.Option(
    "--erode", min=0, rich_help_panel=MASK, metavar="PX", help="Shrink the mask by PX pixels on every side.")]
MinArea = Annotated[int, typer.Option(
    "--min-area", min=0, rich_help_panel=MASK, metavar="PX", help="Drop mask regions smaller than PX pixels.")]
Invert = Annotated[bool, typer.Option("--invert", rich_help_panel=MASK, help="Swap mask and background.")]

Union = Annotated[bool, typer.Option(
    "--union", rich_help_panel=PROMPT, help="Write one mask, the union of all prompts (pixelwise max).")]
Negative = Annotated[list[str] | None, typer.Option(
    "--negative", "-n", rich_help_panel=PROMPT, metavar="PROMPT",
    help="Cut out pixels where this prompt fires (repeatable).")]
Template = Annotated[list[str] | None, typer.Option(
    "--template", rich_help_panel=PROMPT, metavar="TEXT",
    help='Embed each text prompt in templates like "a photo of a {}." and average (repeatable).')]
PromptImage = Annotated[list[Path] | None, typer.Option(
    "--prompt-image", rich_help_panel=PROMPT, metavar="REF",
    help="An example image of what to segment (repeatable: the examples' embeddings are averaged).")]
PromptMask = Annotated[list[Path] | None, typer.Option(
    "--prompt-mask", rich_help_panel=PROMPT, metavar="REF_MASK",
    help="The object's mask in the matching --prompt-image: crop, blur and darken around it as the paper does.")]


Refine = Annotated[str, typer.Option(
    "--refine", rich_help_panel=REFINE, metavar="none|guided|matting|sam",
    autocompletion=lambda: ["none", "guided", "matting", "sam"],
    help="Make the map follow the object's edges before the mask steps: guided (fast edge-aware filter), "
         "matting (alpha at hair and fur, clean cut-out colours; needs pymatting) or sam (Segment Anything).")]
SamWeights = Annotated[str | None, typer.Option(
    "--sam-weights", rich_help_panel=REFINE, metavar="NAME|DIR",
    help="SAM checkpoint for --refine sam (default nielsr/slimsam-50-uniform): a published name, hub id or folder.")]
