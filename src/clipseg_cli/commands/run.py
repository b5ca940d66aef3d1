"""The part of ``segment`` and ``batch`` that is the same: load once, build prompts, run, report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from clipseg_cli.errors import ClipSegError

if TYPE_CHECKING:
    from clipseg_cli.inputs import WorkItem


@dataclass
class Settings:
    """Every option of a segmentation run, as the user gave it."""

    weights: str
    device: str = "auto"
    precision: str = "auto"
    revision: str | None = None
    offline: bool = False
    batch_size: int | None = None
    overlay: bool = True
    soft: bool = False
    cutout: bool = False
    force: bool = False
    json: bool = False
    quiet: bool = False
    verbose: bool = False
    max_pixels: int = 0
    threshold: float = 0.4
    blur: float = 0.0
    dilate: int = 0
    erode: int = 0
    min_area: int = 0
    invert: bool = False
    union: bool = False
    negative: list[str] | None = None
    template: list[str] | None = None
    prompt_image: list[Path] | None = None
    prompt_mask: list[Path] | None = None


def build_prompts(texts: list[str], settings: Settings) -> tuple[list, list[str]]:
    """Prompts for the engine and their names: texts (with templates), then the example images.

    Returns:
        (prompts, names).
    """
    from clipseg_cli.imaging.decode import open_image
    from clipseg_cli.imaging.visual_prompt import prepare_visual_prompt
    from clipseg_cli.predictor import Mean

    for template in settings.template or []:
        if template.count("{}") != 1:
            raise ClipSegError(f"--template {template!r} must contain {{}} exactly once")
    prompts: list = [Mean(tuple(t.format(text) for t in settings.template)) if settings.template else text
                     for text in texts]
    names = list(texts)
    refs, masks = settings.prompt_image or [], settings.prompt_mask or []
    if masks and len(masks) != len(refs):
        raise ClipSegError(f"give one --prompt-mask per --prompt-image ({len(refs)} images, {len(masks)} masks)")
    if refs:
        examples = [
            prepare_visual_prompt(open_image(ref).image, open_image(mask).image if masks else None)
            for ref, mask in zip(refs, masks or [None] * len(refs), strict=True)
        ]
        prompts.append(Mean(tuple(examples)) if len(examples) > 1 else examples[0])
        names.append("image " + " ".join(ref.stem for ref in refs))
    if not prompts:
        raise ClipSegError("give at least one prompt (text, -p/--prompt, --prompts-file or --prompt-image)")
    return prompts, names


def check_output_dir(path: Path | None) -> None:
    """Refuse an --output-dir that exists but is not a folder, before any work."""
    if path is not None and path.exists() and not path.is_dir():
        raise ClipSegError(f"--output-dir {path}: exists and is not a folder; choose another")


def execute(items: list[WorkItem], texts: list[str], settings: Settings) -> int:
    """Load the model once, run every item, report.

    Returns:
        The exit code: 0 all done, 1 some image failed.
    """
    from clipseg_cli.commands.report import Reporter
    from clipseg_cli.engine import Engine
    from clipseg_cli.outputs import OutputPlan
    from clipseg_cli.postprocess import PostProcess
    from clipseg_cli.predictor import Segmenter

    post = PostProcess(threshold=settings.threshold, blur=settings.blur, dilate=settings.dilate - settings.erode,
                       min_area=settings.min_area, invert=settings.invert)
    plan = OutputPlan(overlay=settings.overlay, soft=settings.soft, cutout=settings.cutout, post=post)
    prompts, names = build_prompts(texts, settings)
    reporter = Reporter(len(items), json_lines=settings.json, quiet=settings.quiet)
    segmenter = Segmenter.from_pretrained(settings.weights, device=settings.device, precision=settings.precision,
                                          offline=settings.offline or None, revision=settings.revision)
    engine = Engine(segmenter, prompts, plan=plan, names=names, negatives=settings.negative or [],
                    union=settings.union, batch_size=settings.batch_size, force=settings.force,
                    max_pixels=settings.max_pixels, trim=True, stats=settings.json,
                    protected=[item.source for item in items] + (settings.prompt_image or [])
                    + (settings.prompt_mask or []))
    if settings.verbose:
        dtype = str(segmenter.dtype).removeprefix("torch.")
        reporter.info(f"device {segmenter.device}, precision {dtype} ({settings.precision} asked), "
                      f"batch size {engine.batch_size}, {len(items)} image(s)")
    try:
        for result in engine.run(items):
            reporter.add(result)
    finally:
        code = reporter.close()
    return code
