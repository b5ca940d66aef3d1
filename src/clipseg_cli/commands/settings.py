"""The options ``segment`` and ``batch`` share (Settings), turned into a library Job and executed with a report."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, get_type_hints

from clipseg_cli.commands import options
from clipseg_cli.constants import DEFAULT_MAX_PIXELS, DEFAULT_MODEL, DEFAULT_THRESHOLD
from clipseg_cli.errors import ClipSegError
from clipseg_cli.inputs import WorkItem, folder_problem

if TYPE_CHECKING:
    from clipseg_cli.job import Job


@dataclass
class Settings:
    """Every option shared by ``segment`` and ``batch``: each field is a command-line option."""

    weights: options.Weights = DEFAULT_MODEL
    device: options.Device = "auto"
    precision: options.Precision = "auto"
    revision: options.Revision = None
    offline: options.Offline = False
    batch_size: options.BatchSize = None
    overlay: options.Overlay = True
    soft: options.Soft = False
    cutout: options.Cutout = False
    bg_color: options.BgColor = None
    overlay_color: options.OverlayColor = None
    overlay_alpha: options.OverlayAlpha = 0.5
    force: options.Force = False
    json: options.Json = False
    quiet: options.Quiet = False
    verbose: options.Verbose = False
    max_pixels: options.MaxPixels = DEFAULT_MAX_PIXELS
    threshold: options.Threshold = DEFAULT_THRESHOLD
    blur: options.Blur = 0.0
    dilate: options.Dilate = 0
    erode: options.Erode = 0
    min_area: options.MinArea = 0
    invert: options.Invert = False
    union: options.Union = False
    negative: options.Negative = None
    template: options.Template = None
    prompt_image: options.PromptImage = None
    prompt_mask: options.PromptMask = None
    refine: options.Refine = "none"
    sam_weights: options.SamWeights = None


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
    def command_with_settings(**kwargs) -> None:
        settings = Settings(**{name: kwargs.pop(name) for name in names})
        command(settings=settings, **kwargs)

    parameters = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + shared
    command_with_settings.__signature__ = inspect.Signature(parameters)
    command_with_settings.__annotations__ = {p.name: p.annotation for p in parameters}
    return command_with_settings


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


def job_of(texts: list[str], settings: Settings) -> Job:
    """The library Job that the options ask for.

    Returns:
        The Job; the model and the inputs are not part of it.
    """
    from clipseg_cli.job import Job
    from clipseg_cli.outputs import OutputPlan
    from clipseg_cli.postprocess import PostProcess

    post = PostProcess(**same_named(PostProcess, settings))  # an option of the mask steps is named as its field
    plan = OutputPlan(**same_named(OutputPlan, settings), post=post)
    return Job(texts, templates=settings.template or (), prompt_images=settings.prompt_image or (),
               prompt_masks=settings.prompt_mask or (), negatives=settings.negative or (), union=settings.union,
               plan=plan, force=settings.force, max_pixels=settings.max_pixels, batch_size=settings.batch_size,
               stats=settings.json, refine=settings.refine, sam_weights=settings.sam_weights)


def same_named(kind: type, settings: Settings) -> dict[str, object]:
    """Returns: the options named as the fields of the dataclass ``kind``, by name (its other fields left out)."""
    return {f.name: getattr(settings, f.name) for f in fields(kind) if hasattr(settings, f.name)}


def execute(items: list[WorkItem], texts: list[str], settings: Settings, *, protected: list[Path] | None = None,
            ray: RayOptions | None = None, kept: list[str] | None = None) -> int:
    """Run `Job.run` on the items with the options' model, reporting each result as it comes.

    Arguments:
        items: the work items.
        texts: the text prompts.
        protected: more files never written to (a shard gives every input of the whole run).
        ray: run on a Ray cluster instead of here.
        kept: receives every result's JSON line.

    Returns:
        The exit code: 0 all done, 1 some image failed.
    """
    from clipseg_cli.commands.report import Reporter
    from clipseg_cli.predictor import ModelSpec

    began = False  # the model (or Ray) is ready: from then on the run ends with a summary

    def begin(description: str) -> None:
        nonlocal began
        began = True
        if settings.verbose:
            reporter.info(description)

    model = ModelSpec(settings.weights, settings.device, settings.precision, settings.offline or None,
                      settings.revision)
    results = job_of(texts, settings).run(  # the checks and the prompts run here, before the report starts
        model, items, protected=protected or (), ray=ray, progress=not settings.quiet, started=begin,
        late=lambda result: reporter.add(result))  # the results written but not yet reported when cut short
    reporter = Reporter(len(items), json_lines=settings.json, quiet=settings.quiet, kept=kept)
    try:
        with closing(results):
            for result in results:
                reporter.add(result)
    finally:
        if began:  # a set-up error (exit 2) is its one line, with no summary
            code = reporter.close()
    return code


@dataclass(frozen=True)
class RayOptions:
    """Where ``--ray`` runs: address None starts a local Ray, ``auto`` joins this machine's cluster."""

    address: str | None = None
    actors: int | None = None
    quiet: bool = False
