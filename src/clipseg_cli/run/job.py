"""Job: everything a ``clipseg segment`` or ``clipseg batch`` run asks for, as plain Python values.

The command line parses its options into a Job; a notebook builds one directly. Either way the
same code builds the prompts, checks the output folders and runs the `Engine`, so the files
written (names, pixels, fingerprints, skip rules) are the same::

    job = Job(["red car"], plan=OutputPlan(post=PostProcess(blur=2, dilate=8)))
    for result in job.segment(segmenter, ["photo.jpg"], output_dir="masks"):
        print(result.status, result.mask)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Protocol

from clipseg_cli.errors import ClipSegError
from clipseg_cli.postprocess import PostProcess
from clipseg_cli.predictor import ModelSpec, Segmenter
from clipseg_cli.prompts import Prompt, build_prompts, check_texts
from clipseg_cli.refine import Refiner, check_available, load_refiner
from clipseg_cli.run.engine import Engine, Pipeline
from clipseg_cli.run.inputs import WorkItem, collect, folder_problem
from clipseg_cli.run.outputs import OutputPlan
from clipseg_cli.run.targets import Result, Targets, decode_min_side, recorded_settings

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class Job:
    """What to segment and what to write, for any number of images (one CLI run of segment or batch).

    texts: the text prompts (``segment IMAGE PROMPT...``, ``-p``).
    templates: ``--template``; each text's embedding is the average over them.
    prompt_images: ``--prompt-image`` files (one prompt, the examples averaged).
    prompt_masks: ``--prompt-mask`` files, one per prompt image.
    negatives: ``--negative``.
    union: ``--union``, one mask for all prompts.
    plan: the files to write and the mask steps (``--overlay``, ``--soft``, ``--cutout``, ``--threshold``, ...).
    force: ``--force``, redo outputs that exist.
    refine: ``--refine``, none, guided, matting or sam (`clipseg_cli.refine`): the map follows the
        object's edges, after the prompt algebra and before the mask steps.
    sam_weights: ``--sam-weights``.
    pipeline: how the run computes (``--batch-size``, ``--max-pixels``, statistics, threads): `Pipeline`.
    """

    texts: Sequence[str] = ()
    templates: Sequence[str] = ()
    prompt_images: Sequence[PathLike] = ()
    prompt_masks: Sequence[PathLike] = ()
    negatives: Sequence[str] = ()
    union: bool = False
    plan: OutputPlan = field(default_factory=OutputPlan)
    force: bool = False
    refine: str = "none"
    sam_weights: str | None = None
    pipeline: Pipeline = field(default_factory=Pipeline)

    @classmethod
    def from_options(cls, texts: Sequence[str], options: Mapping[str, object]) -> Job:
        """The Job that named options ask for (the CLI's and the server's, one way): each option is passed on
        by the name of its field in the Job (its `Pipeline` included), its `OutputPlan` or its `PostProcess`.

        Arguments:
            texts: the text prompts.
            options: values by field name; a None keeps the field's default, other names are ignored.

        Returns:
            The Job; the model and the inputs are not part of it.

        Raises:
            ClipSegError: a value out of its range (`PostProcess` says which).
        """
        def named(kind: type) -> dict[str, object]:
            return {f.name: options[f.name] for f in fields(kind)
                    if f.name not in ("texts", "plan", "post", "pipeline") and options.get(f.name) is not None}

        plan = OutputPlan(**named(OutputPlan), post=PostProcess(**named(PostProcess)))
        return cls(texts, plan=plan, pipeline=Pipeline(**named(Pipeline)), **named(cls))

    def check(self, items: Sequence[WorkItem] = ()) -> None:
        """Refuse, before any model loads, texts that are not UTF-8, templates without one ``{}``, and
        output folders of existing inputs that could not be written.

        Raises:
            ClipSegError: naming the first problem.
        """
        check_texts(self.texts, negatives=self.negatives, templates=self.templates)
        check_available(self.refine)
        check_output_folders(items)

    def prompts(self) -> tuple[list[Prompt], list[str]]:
        """The prompts and their names (the example images are decoded and checked here).

        Returns:
            (prompts, names), as `clipseg_cli.prompts.build_prompts` gives them.
        """
        return build_prompts(self.texts, templates=self.templates, prompt_images=self.prompt_images,
                             prompt_masks=self.prompt_masks, max_pixels=self.pipeline.max_pixels)

    def refiner(self, segmenter: Segmenter, *, offline: bool | None = None, progress: bool = True) -> Refiner | None:
        """The refinement of ``refine`` (its SAM checkpoint loaded, on the segmenter's device), or None.

        Arguments:
            segmenter: the model whose device the refiner runs on.
            offline: never download the SAM checkpoint (None: as HF_HUB_OFFLINE says).
            progress: show download bars.
        """
        return load_refiner(self.refine, sam_weights=self.sam_weights, device=segmenter.device_type,
                            offline=offline, progress=progress)

    def engine(self, segmenter: Segmenter, items: Sequence[WorkItem] = (), *,
               prompts: tuple[list[Prompt], list[str]] | None = None, drop_unused_layers: bool = False,
               protected: Iterable[PathLike] = (), refiner: Refiner | None = None) -> Engine:
        """The Engine that runs this job (built once per model: Ray's actors and Ray Data keep it for many
        chunks); the inputs and the prompt files are protected from being written.

        Arguments:
            segmenter: the loaded model.
            items: the work items (their sources are protected).
            prompts: from `prompts`, when built already.
            drop_unused_layers: free the text tower once the prompts are embedded (the segmenter then takes
                no new prompts).
            protected: more files never to write (e.g. the inputs of a whole run when ``items`` are a part of it).
            refiner: from `refiner` (default: loaded here when ``refine`` is not none).

        Returns:
            The Engine; `Engine.process` runs it.
        """
        refiner = refiner if refiner is not None else self.refiner(segmenter)
        targets = self.targets(items, prompts=prompts, protected=protected)
        return Engine(segmenter, targets, self.pipeline, drop_unused_layers=drop_unused_layers, refiner=refiner)

    def targets(self, items: Sequence[WorkItem] = (), *, prompts: tuple[list[Prompt], list[str]] | None = None,
                protected: Iterable[PathLike] = ()) -> Targets:
        """What to write per image (no model needed); the inputs and the prompt files are protected.

        Arguments:
            items: the work items (their sources are protected).
            prompts: from `prompts`, when built already.
            protected: more files never to write.

        Returns:
            The run's `Targets`.
        """
        prompts, names = prompts or self.prompts()
        protected = [*(item.source for item in items), *protected, *self.prompt_images, *self.prompt_masks]
        return Targets.build(prompts, names, negatives=list(self.negatives), union=self.union, plan=self.plan,
                             force=self.force, protected=protected)

    def up_to_date(self, model: ModelSpec, items: Sequence[WorkItem], targets: Targets, *,
                   progress: bool = True) -> list[Result] | None:
        """The results of a rerun whose outputs all exist with matching fingerprints, found before any model
        loads; None as soon as one output is to be written (or when refinement or --force is asked).

        Arguments:
            model: the model the run would load.
            items: the work items.
            targets: from `targets`.
            progress: show download bars.

        Returns:
            One 'skipped' Result per (item, target), or None.
        """
        if self.force or self.refine != "none" or not items:
            return None
        identity, fp32, input_size = model.expected_identity(progress=progress)
        settings = recorded_settings(self.plan, decode_min_side(self.plan, fp32, False, input_size), None)
        results = []
        for item in items:
            decided = targets.decide(item, identity, settings)
            if any(result.status != "skipped" for result in decided):
                return None
            results.extend(decided)
        return results

    def segment(self, segmenter: Segmenter, inputs: Iterable[PathLike], output_dir: PathLike | None = None, *,
                recursive: bool = False) -> Iterator[Result]:
        """Segment image files and folders and write the outputs, as ``clipseg batch`` (or ``segment``
        without ``output_dir``: the outputs then go beside each image).

        Arguments:
            inputs: image files and folders.
            output_dir: the outputs mirror the input tree there.
            recursive: walk subfolders of input folders.

        Returns:
            An iterator of one Result per (image, prompt), in input order, as each is written.
        """
        items = collect([os.fspath(path) for path in inputs], output_dir=None if output_dir is None
                        else Path(output_dir), recursive=recursive)
        yield from self.run(segmenter, items)

    def run(self, model: ModelSpec | Segmenter, items: Sequence[WorkItem], *, protected: Iterable[PathLike] = (),
            place: Place | None = None, progress: bool = True, started: Callable[[str], None] | None = None,
            late: Callable[[Result], None] | None = None) -> Iterator[Result]:
        """The whole run, in its one order: the checks and the prompts now (before any model loads), then,
        as the results are taken, the model (or the place's runner), the refiner, the targets, the engine.

        Arguments:
            model: a loaded Segmenter (used as it is), or the spec of one to load (its text tower is
                then freed once the prompts are embedded).
            items: the work items.
            protected: more files never to write (a shard gives every input of the whole run).
            place: run elsewhere instead of here (`clipseg_cli.scale.ray_batch.RayPlace`: Ray's actors;
                needs a ModelSpec).
            progress: show download bars.
            started: told what runs (device, precision, batch size), once the model is ready.
            late: given each result that was written but not yet yielded when the run was cut short
                (Ctrl-C, a signal, a closed stdout, the iterator closed).

        Returns:
            An iterator of one Result per (item, target), in input order, as each is written.

        Raises:
            ClipSegError: a set-up error (raised by this call, or by the first step of the iterator).
        """
        self.check(items)
        prompts = self.prompts()
        return self._results(model, items, prompts, protected, place, progress, started, late)

    def _results(self, model: ModelSpec | Segmenter, items: Sequence[WorkItem],
                 prompts: tuple[list[Prompt], list[str]], protected: Iterable[PathLike], place: Place | None,
                 progress: bool, started: Callable[[str], None] | None,
                 late: Callable[[Result], None] | None) -> Iterator[Result]:
        """`run`'s second half, in a generator so that nothing loads before the results are asked for."""
        skipped = self.up_to_date(model, items, self.targets(items, prompts=prompts, protected=protected),
                                  progress=progress) if isinstance(model, ModelSpec) and place is None else None
        if skipped is not None:
            if started is not None:
                started(f"no model loaded: the outputs of all {len(items)} image(s) are up to date")
            yield from skipped
            return
        runner: Runner
        if place is not None and isinstance(model, ModelSpec):
            runner, described = place.runner(self, model, items, protected=protected, progress=progress)
        else:
            owned = isinstance(model, ModelSpec)
            segmenter = model.load(progress=progress) if owned else model
            refiner = self.refiner(segmenter, offline=model.offline if owned else None, progress=progress)
            runner = self.engine(segmenter, items, prompts=prompts, drop_unused_layers=owned, protected=protected,
                                 refiner=refiner)
            asked = model.precision if owned else segmenter.precision
            described = (f"device {segmenter.device_type}, precision {segmenter.precision} ({asked} asked) on "
                         f"{segmenter.backend}, batch size {runner.batch_size}, {len(items)} image(s)")
        if started is not None:
            started(described)
        try:
            yield from runner.process(items)
        finally:
            if late is not None:
                for result in runner.unreported():
                    late(result)


class Runner(Protocol):
    """What runs a job's items: an `Engine` here, or a place's runner (Ray's actors)."""

    def process(self, items: Sequence[WorkItem]) -> Iterator[Result]: ...

    def unreported(self) -> list[Result]: ...


class Place(Protocol):
    """Somewhere else a job runs (`clipseg_cli.scale.ray_batch.RayPlace`); the run's order stays `Job.run`'s."""

    def runner(self, job: Job, model: ModelSpec, items: Sequence[WorkItem], *, protected: Iterable[PathLike],
               progress: bool) -> tuple[Runner, str]:
        """Returns: the runner of ``job``'s items there, and a line saying what runs."""
        ...


def check_output_folders(items: Sequence[WorkItem]) -> None:
    """Refuse a run, before the model loads, when the outputs of an existing input could not be written.

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
