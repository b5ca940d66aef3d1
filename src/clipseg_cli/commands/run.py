"""The part of ``segment`` and ``batch`` that is the same: load once, build prompts, run, report."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, get_type_hints

from clipseg_cli.commands import options as o
from clipseg_cli.constants import DEFAULT_MAX_PIXELS, DEFAULT_MODEL, DEFAULT_THRESHOLD
from clipseg_cli.errors import ClipSegError
from clipseg_cli.inputs import WorkItem, folder_problem

if TYPE_CHECKING:
    from PIL import Image


@dataclass
class Settings:
    """Every option shared by ``segment`` and ``batch``: each field is a command-line option."""

    weights: o.Weights = DEFAULT_MODEL
    device: o.Device = "auto"
    precision: o.Precision = "auto"
    revision: o.Revision = None
    offline: o.Offline = False
    batch_size: o.BatchSize = None
    overlay: o.Overlay = True
    soft: o.Soft = False
    cutout: o.Cutout = False
    force: o.Force = False
    json: o.Json = False
    quiet: o.Quiet = False
    verbose: o.Verbose = False
    max_pixels: o.MaxPixels = DEFAULT_MAX_PIXELS
    threshold: o.Threshold = DEFAULT_THRESHOLD
    blur: o.Blur = 0.0
    dilate: o.Dilate = 0
    erode: o.Erode = 0
    min_area: o.MinArea = 0
    invert: o.Invert = False
    union: o.Union = False
    negative: o.Negative = None
    template: o.Template = None
    prompt_image: o.PromptImage = None
    prompt_mask: o.PromptMask = None


def with_settings(command: Callable[..., None]) -> Callable[..., None]:
    """Give a command every option of Settings; it receives them as one ``settings`` argument.

    The options are declared once (the fields above); typer reads the combined signature.
    """
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "settings"]
    hints = get_type_hints(Settings, include_extras=True)
    shared = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hints[f.name])
              for f in fields(Settings)]
    names = {f.name for f in fields(Settings)}

    @functools.wraps(command)
    def run_command(**kwargs) -> None:
        settings = Settings(**{name: kwargs.pop(name) for name in names})
        command(settings=settings, **kwargs)

    parameters = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + shared
    run_command.__signature__ = inspect.Signature(parameters)
    run_command.__annotations__ = {p.name: p.annotation for p in parameters}
    return run_command


def build_prompts(texts: list[str], settings: Settings) -> tuple[list, list[str]]:
    """Prompts for the engine and their names: texts (with templates), then the example images.

    A template's only placeholder is ``{}``; other braces are literal text.

    Returns:
        (prompts, names).
    """
    from clipseg_cli.imaging.decode import open_image
    from clipseg_cli.imaging.visual_prompt import visual_prompt
    from clipseg_cli.predictor import Mean

    prompts: list = [Mean(tuple(t.replace("{}", text) for t in settings.template)) if settings.template else text
                     for text in texts]
    names = list(texts)
    refs, masks = settings.prompt_image or [], settings.prompt_mask or []
    if masks and len(masks) != len(refs):
        raise ClipSegError(f"give one --prompt-mask per --prompt-image ({len(refs)} images, {len(masks)} masks)")
    if refs:
        def decode(path: Path) -> Image.Image:
            return open_image(path, max_pixels=settings.max_pixels).image

        examples = [visual_prompt(decode(ref), decode(mask)) if mask else decode(ref)
                    for ref, mask in zip(refs, masks or [None] * len(refs), strict=True)]
        prompts.append(Mean(tuple(examples)) if len(examples) > 1 else examples[0])
        names.append("image " + " ".join(ref.stem for ref in refs))
    if not prompts:
        raise ClipSegError("give at least one prompt (text, -p/--prompt, --prompts-file or --prompt-image)")
    return prompts, names


def check_texts(texts: list[str], settings: Settings) -> None:
    """Refuse prompts, negatives and templates that are not valid UTF-8, and templates without one ``{}``."""
    for option, values in (("prompt", texts), ("--negative", settings.negative), ("--template", settings.template)):
        for text in values or []:
            check_text(option, text)
    for template in settings.template or []:
        if template.count("{}") != 1:
            raise ClipSegError(f"--template {template!r} must contain {{}} exactly once")


def check_text(option: str, text: str) -> None:
    """Refuse a text that is not valid UTF-8: argv bytes that are not arrive as surrogate escapes."""
    from clipseg_cli.commands.report import printable

    shown = printable(text)
    if shown is not text:
        raise ClipSegError(f'{option} "{shown}" is not valid UTF-8 (the bad bytes are shown as \\xNN); '
                           "give it as UTF-8 text (check the terminal's or the script's encoding)")


def check_output_dir(value: str | None) -> Path | None:
    """Refuse an --output-dir that is empty, or that we could not write in or create, before any work.

    Returns:
        The folder as a Path, or None when none was given.
    """
    if value is None:
        return None
    if not value:
        raise ClipSegError('--output-dir "" is empty; give a folder (-o . is the current one)')
    problem = folder_problem(Path(value))
    if problem:
        raise ClipSegError(f"--output-dir {value}: {problem}")
    return Path(value)


def check_output_folders(items: list[WorkItem]) -> None:
    """Refuse the run, before the model loads, when the outputs of an existing input could not be written.

    Raises:
        ClipSegError: naming the first such folder.
    """
    checked: set[Path] = set()
    for item in items:
        if item.output_dir not in checked and item.source.exists():
            checked.add(item.output_dir)
            problem = folder_problem(item.output_dir)
            if problem:
                raise ClipSegError(f"output folder {item.output_dir}: {problem}")


def execute(items: list[WorkItem], texts: list[str], settings: Settings) -> int:
    """Check the settings, prompts and output folders, then load the model once, run every item, report.

    Returns:
        The exit code: 0 all done, 1 some image failed.
    """
    check_texts(texts, settings)
    check_output_folders(items)
    from clipseg_cli.commands.report import Reporter
    from clipseg_cli.engine import Engine
    from clipseg_cli.outputs import OutputPlan
    from clipseg_cli.postprocess import PostProcess
    from clipseg_cli.predictor import Segmenter

    post = PostProcess(threshold=settings.threshold, blur=settings.blur, dilate=settings.dilate, erode=settings.erode,
                       min_area=settings.min_area, invert=settings.invert)
    plan = OutputPlan(overlay=settings.overlay, soft=settings.soft, cutout=settings.cutout, post=post)
    prompts, names = build_prompts(texts, settings)
    reporter = Reporter(len(items), json_lines=settings.json, quiet=settings.quiet)
    segmenter = Segmenter.from_pretrained(settings.weights, device=settings.device, precision=settings.precision,
                                          offline=settings.offline or None, revision=settings.revision,
                                          progress=not settings.quiet)
    engine = Engine(segmenter, prompts, plan=plan, names=names, negatives=settings.negative or [],
                    union=settings.union, batch_size=settings.batch_size, force=settings.force,
                    max_pixels=settings.max_pixels, trim=True, stats=settings.json,
                    protected=[item.source for item in items] + (settings.prompt_image or [])
                    + (settings.prompt_mask or []))
    if settings.verbose:
        reporter.info(f"device {segmenter.device_type}, precision {segmenter.precision} ({settings.precision} asked) "
                      f"on {segmenter.backend}, "
                      f"batch size {engine.batch_size}, {len(items)} image(s)")
    try:
        for result in engine.run(items):
            reporter.add(result)
    finally:
        for result in engine.unreported():  # written before a Ctrl-C, a signal or a closed stdout
            reporter.add(result)
        code = reporter.close()
    return code
