"""The combined overlay (``--overlay-combined``): one file per image with every target's mask in its palette
colour and a legend of the prompts. Its skip-or-redo decision and its write; its name is `combined_path`.

The file is made from all of an image's masks, so when it must be redone every target of the image is redone
(the masks are the same; the files are rewritten atomically).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clipseg_cli.fingerprint import PNG_KEY, make_record, stale_reason
from clipseg_cli.imaging.writing import combined_overlay, save_png
from clipseg_cli.outputs import COMBINED_KIND, combined_path

if TYPE_CHECKING:
    from PIL import Image

    from clipseg_cli.inputs import WorkItem
    from clipseg_cli.targets import Result, Targets


def decide(targets: Targets, item: WorkItem, results: list[Result], input_sha256: str, model: dict[str, str],
           settings: dict[str, object]) -> list[Result]:
    """Add the combined overlay to one item's decided results (a no-op unless the plan asks for it).

    Every result names the file; the first carries its fingerprint record. When the file is missing
    or stale, skipped results become pending (with the stale reason).

    Arguments:
        targets: the run's targets.
        item: the image and where its outputs go.
        results: from `Targets.decide`, one per target.
        input_sha256: the image file's digest.
        model: the Segmenter's identity.
        settings: every setting that changes the outputs' pixels.

    Returns:
        The results, or a 'failed' result per target when the file would overwrite a protected one.
    """
    if not targets.plan.overlay_combined or any(result.status == "failed" for result in results):
        return results
    path = combined_path(item.output_dir, item.stem)
    refused = targets.refuse_overwriting_inputs(item, [path])
    if refused:
        return refused
    record = make_record("combined overlay", input_sha256=input_sha256,
                         prompt=" + ".join(target.key for target in targets.targets),
                         prompt_text=" | ".join(target.text for target in targets.targets), model=model,
                         settings={**settings, **targets.plan.looks(COMBINED_KIND)})
    for result in results:
        result.combined_overlay = str(path)
    results[0].records[COMBINED_KIND] = record
    if targets.force or all(result.status == "pending" for result in results):
        return results
    reason = stale_reason(path, record) if os.path.lexists(path) else "combined overlay missing"
    if reason is not None:
        for result in results:
            if result.status == "skipped":
                result.status, result.reason = "pending", reason
    return results


def write(image: Image.Image, masks: list[np.ndarray], targets: Targets, results: list[Result]) -> None:
    """Write an image's combined overlay atomically, with its fingerprint record (see `decide`).

    Arguments:
        image: the RGB image at full size.
        masks: HxW bool, the final mask M of every target, in target order.
        targets: the run's targets (their prompts make the legend).
        results: the image's results, all of them, as `decide` left them.
    """
    drawn = combined_overlay(image, masks, [target.prompt for target in targets.targets], targets.plan.overlay_alpha)
    save_png(drawn, Path(results[0].combined_overlay), text={PNG_KEY: results[0].records[COMBINED_KIND]})
