"""What a run writes for each image: the targets (one per prompt, or one union), their names, and
the skip-or-redo decision for each (image, target), and the records of what happened.

The combined overlay (``--overlay-combined``) is one file per image with every target's mask in its palette
colour and a legend of the prompts; it is made from all of an image's masks, so when it must be redone every
target of the image is redone (the masks are the same; the files are rewritten atomically).

Built once per run from the prompts and the output plan; no model is needed, so the naming and
rerun rules are tested without one (tests/test_targets.py).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from clipseg_cli.errors import ClipSegError
from clipseg_cli.fingerprint import PNG_KEY, file_sha256, make_record, prompt_key, stale_reason
from clipseg_cli.imaging.writing import combined_overlay, save_png
from clipseg_cli.prompts import Prompt
from clipseg_cli.run.inputs import FileSet, WorkItem
from clipseg_cli.run.outputs import COMBINED_KIND, OutputPlan, combined_path, label_for, output_paths

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image


STATS_KEYS = ("coverage", "bbox", "mean_probability")  # every Result's stats, null where no mask was measured


def no_stats() -> dict:
    """Returns: the statistics of a result whose mask was not measured (skipped, failed, or stats off)."""
    return dict.fromkeys(STATS_KEYS)


@dataclass
class Result:
    """What happened to one (image, prompt): the line ``--json`` prints."""

    image: str
    prompt: str
    status: str  # ok, skipped or failed (pending while planned and not written yet)
    mask: str | None = None
    overlay: str | None = None
    cutout: str | None = None
    error: str | None = None
    reason: str | None = None  # why an existing output was redone; None when fresh, skipped or forced
    stats: dict = field(default_factory=no_stats)  # STATS_KEYS, each None unless this run measured the mask
    records: dict[str, str] = field(default_factory=dict, repr=False)  # per kind, the fingerprint to store
    refine: str | None = None  # the refinement that ran (--refine); not in the JSON line when none did
    combined_overlay: str | None = None  # the image's --overlay-combined file; not in the JSON line without it

    def to_json(self) -> dict:
        record = asdict(self)
        del record["records"]
        for optional in ("refine", "combined_overlay"):
            if record[optional] is None:
                del record[optional]
        record.update({**no_stats(), **record.pop("stats")})  # one shape for every status
        return record


@dataclass(frozen=True)
class Target:
    """One map written per image: a prompt, or the union of all of them."""

    label: str  # in file names
    prompt: str  # for people
    key: str = ""  # everything asked (prompt keys, union, negatives), for fingerprints
    text: str = ""  # the prompt with its negatives, for people reading a fingerprint


@dataclass(frozen=True, eq=False)
class Targets:
    """The maps a run writes per image and the rules for writing them.

    prompts: the distinct positive prompts, in given order (a prompt given twice runs once).
    negatives: the distinct negative prompts.
    union: one target, the union of the prompts.
    targets: one per prompt, or one for the union.
    plan: the files and mask steps.
    force: redo outputs that exist.
    protected: files never written (the inputs).
    """

    prompts: tuple[Prompt, ...]
    negatives: tuple[Prompt, ...]
    union: bool
    targets: tuple[Target, ...]
    plan: OutputPlan
    force: bool = False
    protected: FileSet = field(default_factory=lambda: FileSet(()))

    @classmethod
    def build(cls, prompts: Sequence[Prompt], names: Sequence[str] | None = None, *, negatives: Sequence[Prompt] = (),
              union: bool = False, plan: OutputPlan | None = None, force: bool = False,
              protected: Iterable[str | os.PathLike[str]] = ()) -> Targets:
        """The targets of a run.

        Arguments:
            prompts: texts, images or `Average`s.
            names: how the prompts are shown and named (default: the texts; ``image-N`` for images).
            negatives: prompts whose masks are cut out of every positive mask.
            union: one mask, the union of all prompts, instead of one per prompt.
            plan: the files to write and the mask steps.
            force: redo outputs that exist.
            protected: files never written to: an item whose output would be one of them fails.

        Raises:
            ClipSegError: when no prompt is given.
        """
        if not prompts:
            raise ClipSegError("give at least one prompt")
        names = list(names) if names else [p if isinstance(p, str) else f"image-{i + 1}" for i, p in
                                           enumerate(prompts)]
        distinct = {}
        for prompt, name in zip(prompts, names, strict=True):
            distinct.setdefault(prompt_key(prompt), (prompt, name))
        kept_prompts = tuple(prompt for prompt, _ in distinct.values())
        kept_negatives = tuple({prompt_key(p): p for p in negatives}.values())
        targets = name_targets(kept_prompts, [name for _, name in distinct.values()], kept_negatives, union)
        return cls(kept_prompts, kept_negatives, union, tuple(targets), plan or OutputPlan(), force,
                   FileSet(protected))

    def __len__(self) -> int:
        return len(self.targets)

    def paths(self, item: WorkItem, target: Target) -> dict[str, Path]:
        """Returns: the files of one (item, target), per output kind."""
        return output_paths(item.output_dir, item.stem, target.label, self.plan)

    def decide(self, item: WorkItem, model: dict[str, str], settings: dict[str, object]) -> list[Result]:
        """Decide for one item, before decoding it: a result per target, 'skipped' where its files exist
        with a matching fingerprint (unless forced), else 'pending' (to write), with the reason where an
        existing file did not match. Every target 'failed' when an output would overwrite a protected file.
        With ``plan.overlay_combined``, the image's combined overlay joins the decision (`_decide_combined`).

        Arguments:
            item: the image and where its outputs go.
            model: the Segmenter's identity, stored in each fingerprint.
            settings: every setting that changes the outputs' pixels, stored in each fingerprint.

        Returns:
            One Result per target, in target order.
        """
        try:  # a pipe or a folder is never read here: decoding reports the problem
            digest = file_sha256(item.source) if item.source.is_file() else "not a file"
        except OSError:
            digest = "unreadable"
        results = []
        for target in self.targets:
            paths = self.paths(item, target)
            refused = self.refuse_overwriting_inputs(item, paths.values())
            if refused:
                return refused
            records = self.records(target, digest, model, settings)
            result = Result(str(item.source), target.prompt, "pending", records=records,
                            **{kind: str(path) for kind, path in paths.items()})
            if not self.force:
                existing = [kind for kind, path in paths.items() if os.path.lexists(path)]
                reasons = (stale_reason(paths[kind], records[kind]) for kind in existing)
                result.reason = next((why for why in reasons if why is not None), None)
                if result.reason is None and len(existing) == len(paths):
                    result.status = "skipped"
            results.append(result)
        return self._decide_combined(item, results, digest, model, settings)

    def _decide_combined(self, item: WorkItem, results: list[Result], input_sha256: str, model: dict[str, str],
                         settings: dict[str, object]) -> list[Result]:
        """Add the combined overlay to one item's decided results (a no-op unless the plan asks for it).

        Every result names the file; the first carries its fingerprint record. When the file is missing
        or stale, skipped results become pending (with the stale reason).

        Returns:
            The results, or a 'failed' result per target when the file would overwrite a protected one.
        """
        if not self.plan.overlay_combined or any(result.status == "failed" for result in results):
            return results
        path = combined_path(item.output_dir, item.stem)
        refused = self.refuse_overwriting_inputs(item, [path])
        if refused:
            return refused
        record = make_record("combined overlay", input_sha256=input_sha256,
                             prompt=" + ".join(target.key for target in self.targets),
                             prompt_text=" | ".join(target.text for target in self.targets), model=model,
                             settings={**settings, **self.plan.looks(COMBINED_KIND)})
        for result in results:
            result.combined_overlay = str(path)
        results[0].records[COMBINED_KIND] = record
        if self.force or all(result.status == "pending" for result in results):
            return results
        reason = stale_reason(path, record) if os.path.lexists(path) else "combined overlay missing"
        if reason is not None:
            for result in results:
                if result.status == "skipped":
                    result.status, result.reason = "pending", reason
        return results

    def write_combined(self, image: Image.Image, masks: list[np.ndarray], results: list[Result]) -> None:
        """Write an image's combined overlay atomically, with its fingerprint record (see `_decide_combined`).

        Arguments:
            image: the RGB image at full size.
            masks: HxW bool, the final mask M of every target, in target order.
            results: the image's results, all of them, as `decide` left them.
        """
        drawn = combined_overlay(image, masks, [target.prompt for target in self.targets], self.plan.overlay_alpha)
        save_png(drawn, Path(results[0].combined_overlay), text={PNG_KEY: results[0].records[COMBINED_KIND]})

    def records(self, target: Target, digest: str, model: dict[str, str], settings: dict[str, object]
                ) -> dict[str, str]:
        """The fingerprint record each file of one (image, target) stores.

        Arguments:
            digest: the input file's sha256.
            model, settings: as `decide` takes them.

        Returns:
            Per output kind of the plan, its record.
        """
        return {kind: make_record(self.plan.output_kind(kind), input_sha256=digest, prompt=target.key,
                                  prompt_text=target.text, model=model,
                                  settings={**settings, **self.plan.looks(kind)})  # looks: their files only
                for kind in self.plan.kinds}

    def refuse_overwriting_inputs(self, item: WorkItem, paths: Iterable[Path]) -> list[Result]:
        """Returns: a 'failed' result per target when one of ``paths`` (an item's outputs) is a protected file,
        else an empty list."""
        clash = next((path for path in paths if path in self.protected), None)
        if clash is None:
            return []
        return self.failed(item, ClipSegError(f"{item.source}: its output {clash} would overwrite an input file; "
                                              "rename that file or choose another --output-dir"))

    def failed(self, item: WorkItem, exc: Exception, part: range | None = None) -> list[Result]:
        """Returns: a 'failed' result per target (of ``part``, default all) with the error on one line."""
        error = str(exc) if isinstance(exc, ClipSegError) else f"{item.source}: {type(exc).__name__}: {exc}"
        targets = self.targets if part is None else self.targets[part.start : part.stop]
        return [Result(str(item.source), t.prompt, "failed", error=" ".join(error.split())) for t in targets]


def name_targets(prompts: Sequence[Prompt], names: Sequence[str], negatives: Sequence[Prompt],
                 union: bool) -> list[Target]:
    """One target per prompt (or one for the union), named by `label_for`.

    A text prompt alone is named by its text; image prompts, unions and negatives add the hash
    of everything asked, so that no two different requests share a file name.

    Returns:
        The targets, in prompt order.
    """
    keys = [prompt_key(prompt) for prompt in prompts]
    negative_names = [p if isinstance(p, str) else "image" for p in negatives]
    negative_key = "".join(" not " + prompt_key(p) for p in negatives)
    negative_text = " not " + " | ".join(negative_names) if negatives else ""
    if union:
        key = "union(" + ", ".join(keys) + ")" + negative_key
        slug_text = "union " + " ".join(names) + (" not " + " ".join(negative_names) if negatives else "")
        prompt = " | ".join(names)
        return [Target(label_for(slug_text, key), prompt, key, prompt + negative_text)]
    targets = []
    for name, key in zip(names, keys, strict=True):
        full_key = key + negative_key
        hashed = "image:" in key or "visual:" in key or bool(negatives)
        slug_text = name + (" not " + " ".join(negative_names) if negatives else "")
        label = label_for(slug_text, full_key if hashed else None)
        targets.append(Target(label, name, full_key, name + negative_text))
    taken = Counter(target.label for target in targets)  # names given through the API may repeat
    return [replace(t, label=label_for(t.prompt, t.key)) if taken[t.label] > 1 else t for t in targets]


def decode_min_side(plan: OutputPlan, fp32: bool, refined: bool, input_size: tuple[int, int]) -> int | None:
    """How small a JPEG may be decoded: fp32 is the reference path and decodes at full size; faster precisions
    may decode at reduced scale, still at least twice the model's input size, when only the mask is needed.

    Arguments:
        plan: the files to write.
        fp32: the model runs the fp32 class.
        refined: a refiner follows the image's edges (it needs the full image).
        input_size: the model's input (height, width).

    Returns:
        The shortest side to decode at least, or None for full size.
    """
    return None if fp32 or plan.needs_full_image or refined else 2 * max(input_size)


def recorded_settings(plan: OutputPlan, min_side: int | None, refine: str | None) -> dict[str, object]:
    """Every setting that changes the outputs' pixels, as each fingerprint records it.

    Arguments:
        plan: the files to write and the mask steps.
        min_side: from `decode_min_side`.
        refine: the refiner's name, or None (absent without refinement: those outputs stay byte-identical).

    Returns:
        The settings by name.
    """
    settings = {**plan.settings(), "decode": "full" if min_side is None else f"min {min_side}"}
    if refine is not None:
        settings["refine"] = refine
    return settings
