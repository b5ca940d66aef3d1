"""The options ``segment`` and ``batch`` share (RunOptions), turned into a library Job and executed with a report."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from contextlib import closing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, get_type_hints

from clipseg_cli.commands import options
from clipseg_cli.commands.report import stdout_is_closed
from clipseg_cli.constants import DEFAULT_MAX_PIXELS, DEFAULT_MODEL, DEFAULT_THRESHOLD
from clipseg_cli.errors import ClipSegError
from clipseg_cli.run.inputs import WorkItem, folder_problem

if TYPE_CHECKING:
    from clipseg_cli.predictor import ModelSpec, Segmenter
    from clipseg_cli.run.job import Job
    from clipseg_cli.scale.ray_batch import RayPlace


@dataclass
class RunOptions:
    """Every option shared by ``segment`` and ``batch``: each field is a command-line option.

    An option of the Job, its `Pipeline`, its OutputPlan or its PostProcess is named as that field
    (`job_from_options` passes it on by name).
    """

    weights: options.Weights = DEFAULT_MODEL
    device: options.Device = "auto"
    precision: options.Precision = "auto"
    revision: options.Revision = None
    offline: options.Offline = False
    batch_size: options.BatchSize = None
    overlay: options.Overlay = True
    overlay_combined: options.OverlayCombined = False
    soft: options.Soft = False
    cutout: options.Cutout = False
    bg_color: options.BgColor = None
    overlay_color: options.OverlayColor = None
    overlay_alpha: options.OverlayAlpha = 0.5
    force: options.Force = False
    json_lines: options.Json = False
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
    negatives: options.Negative = None
    templates: options.Template = None
    prompt_images: options.PromptImage = None
    prompt_masks: options.PromptMask = None
    refine: options.Refine = "none"
    sam_weights: options.SamWeights = None


def with_run_options(command: Callable[..., None] | None = None, *, only: Iterable[str] | None = None,
                     fixed: Mapping[str, object] | None = None) -> Callable[..., None]:
    """Give a command the options of RunOptions; it receives them as one ``run_options`` argument.

    The options are declared once (the fields above); typer reads the combined signature. ``segment`` and
    ``batch`` take every one (``@with_run_options``); other commands take ``only`` some of them
    (``@with_run_options(only=(...), fixed={...})``), the rest keeping their defaults or ``fixed`` values.
    """
    if command is None:
        return functools.partial(with_run_options, only=only, fixed=fixed)
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "run_options"]
    hints = get_type_hints(RunOptions, include_extras=True)
    chosen = [f for f in fields(RunOptions) if only is None or f.name in only]
    shared = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hints[f.name])
              for f in chosen]
    names = {f.name for f in chosen}

    @functools.wraps(command)
    def command_with_options(**kwargs) -> None:
        run_options = RunOptions(**{name: kwargs.pop(name) for name in names}, **(fixed or {}))
        if run_options.json_lines and stdout_is_closed():
            raise ClipSegError("--json prints its lines to stdout, which is closed (>&-): "
                               "redirect it (> results.jsonl) or leave out --json")
        command(run_options=run_options, **kwargs)

    parameters = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + shared
    command_with_options.__signature__ = inspect.Signature(parameters)
    command_with_options.__annotations__ = {p.name: p.annotation for p in parameters}
    return command_with_options


# The options of a command that runs the model and the mask steps but writes no segment/batch files (label, eval).
MODEL_AND_MASK_OPTIONS = ("weights", "device", "precision", "revision", "offline", "max_pixels", "threshold", "blur",
                          "dilate", "erode", "min_area", "invert", "negatives", "templates", "refine", "sam_weights",
                          "quiet")


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


def job_from_options(texts: list[str], run_options: RunOptions, stats: bool | None = None) -> Job:
    """The library Job that the options ask for (`Job.from_options`: each option passed on by its name).

    Arguments:
        texts: the text prompts.
        run_options: the command's options (``--json`` asks for the statistics).
        stats: measure every mask (a shard's manifest keeps them) whatever ``--json`` says.

    Returns:
        The Job; the model and the inputs are not part of it.
    """
    from clipseg_cli.run.job import Job

    return Job.from_options(texts, {**vars(run_options), "stats": run_options.json_lines or bool(stats)})


def execute(items: list[WorkItem], texts: list[str], run_options: RunOptions, *, protected: list[Path] | None = None,
            ray: RayPlace | None = None, collected_lines: list[str] | None = None,
            measure: bool = False, kept_stats: Mapping[tuple[str, str, str], dict] | None = None,
            segmenter: Segmenter | None = None,
            shown_as: dict[str, str] | None = None) -> int:
    """Run `Job.run` on the items with the options' model, reporting each result as it comes.

    Arguments:
        items: the work items.
        texts: the text prompts.
        run_options: the command's options.
        protected: more files never written to (a shard gives every input of the whole run).
        ray: run on a Ray cluster instead of here.
        collected_lines: receives every result's JSON line.
        measure: give every line the mask's statistics, ``--json`` or not (a shard's manifest keeps them).
        kept_stats: the statistics measured before, by (image, prompt, mask file), that a skipped result reports.
        segmenter: a model loaded before, used as it is (default: the options' model, loaded only when needed).
        shown_as: the name to print for a path the user did not give (``segment -``: its copy of stdin is ``-``).

    Returns:
        The exit code: 0 all done, 1 some image failed.
    """
    from clipseg_cli.commands.report import Reporter
    began = False  # the model (or Ray) is ready: from then on the run ends with a summary

    def begin(description: str) -> None:
        nonlocal began
        began = True
        if run_options.verbose:
            reporter.info(description)

    model = segmenter or model_spec(run_options)
    job = job_from_options(texts, run_options, stats=measure)
    results = job.run(  # the checks and the prompts run here, before the report starts
        model, items, protected=protected or (), place=ray, progress=not run_options.quiet, started=begin,
        late=lambda result: reporter.add(result))  # the results written but not yet reported when cut short
    reporter = Reporter(len(items), json_lines=run_options.json_lines, quiet=run_options.quiet,
                        collected_lines=collected_lines, kept_stats=kept_stats, shown_as=shown_as)
    try:
        with closing(results):
            for result in results:
                reporter.add(result)
    finally:
        if began:  # a set-up error (exit 2) is its one line, with no summary
            code = reporter.close()
    return code


def model_spec(run_options: RunOptions) -> ModelSpec:
    """Returns: the model the options ask for (``--weights``, ``--device``, ``--precision``, ...)."""
    from clipseg_cli.predictor import ModelSpec

    return ModelSpec(run_options.weights, run_options.device, run_options.precision, run_options.offline or None,
                     run_options.revision)
