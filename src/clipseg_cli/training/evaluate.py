"""Score a model on manifest records: the maps ``clipseg batch`` would make, against the true masks.

One image-tower pass per image serves all of its records' prompts. The same `score_image` serves
``clipseg eval`` and the validation during training, so both report the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from clipseg_cli.constants import DEFAULT_MAX_PIXELS
from clipseg_cli.errors import ClipSegError
from clipseg_cli.imaging.decode import DecodedImage, open_image
from clipseg_cli.postprocess import PostProcess, any_at_or_above, mask_and_map, zero_where
from clipseg_cli.training.manifest import Record, read_mask
from clipseg_cli.training.metrics import Scores

PREFETCH = 4  # images decoded ahead of the model


@dataclass
class Outcome:
    """One record's result: its IoU at the threshold, or why it was skipped."""

    record: Record
    iou: float | None = None
    error: str | None = None

    def to_json(self) -> dict:
        return {"line": self.record.line, **self.record.key(), "status": "skipped" if self.error else "ok",
                "iou": self.iou, "error": self.error}


def group_by_image(records: Sequence[Record]) -> list[list[Record]]:
    """Records grouped by image file, in order of each image's first appearance.

    Returns:
        One list per image.
    """
    groups: dict[str, list[Record]] = {}
    for record in records:
        groups.setdefault(str(record.image), []).append(record)
    return list(groups.values())


def score_image(scores: Scores, records: Sequence[Record], logits: torch.Tensor, size: tuple[int, int],
                post: PostProcess, negatives: int = 0, refiner=None, image=None,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Outcome]:
    """Score the records of one image from its logits, as ``batch`` turns logits into masks.

    Arguments:
        logits: (R+N)xhxw float32, one row per record, then one per negative prompt.
        size: (width, height) of the upright image.
        refiner: a `clipseg_cli.refine.Refiner` (``--refine``), applied with ``image`` as ``batch`` does.
        max_pixels: the largest mask (``--max-pixels``); a mask's size is checked before it is decoded.

    Returns:
        One Outcome per record.
    """
    from clipseg_cli.predictor import probabilities

    negative_region = any_at_or_above(probabilities(logits[len(records):], size), post.threshold) if negatives else None
    outcomes = []
    for index, record in enumerate(records):
        try:
            truth = read_mask(record.mask, size, max_pixels)
        except ClipSegError as exc:
            outcomes.append(Outcome(record, error=f"{record.where}: {exc}"))
            continue
        prob = zero_where(probabilities(logits[index : index + 1], size)[0], negative_region)
        if refiner is not None:  # as the engine: after the prompt algebra, before the mask steps
            prob = refiner(image, prob, post.threshold).map
        mask, soft = mask_and_map(prob, post)
        outcomes.append(Outcome(record, iou=scores.add(record.prompt, soft, mask, truth)))
    return outcomes


def evaluate_segmenter(segmenter, records: Sequence[Record], scores: Scores, post: PostProcess, *,
                       prompt_for: Callable[[str], object] = str, negatives: Sequence[object] = (),
                       max_pixels: int = DEFAULT_MAX_PIXELS, refiner=None) -> Iterator[Outcome]:
    """Run a Segmenter over the records, one image-tower pass per image for all its prompts.

    Images are decoded ahead in threads; an image that cannot be decoded skips its records.

    Arguments:
        prompt_for: turns a record's prompt text into a Segmenter prompt (e.g. with templates).

    Returns:
        An iterator of Outcomes, grouped by image in order of first appearance.
    """
    groups = group_by_image(records)
    with ThreadPoolExecutor(2, thread_name_prefix="clipseg-eval") as pool:
        decoding = [pool.submit(open_image, group[0].image, max_pixels=max_pixels) for group in groups[:PREFETCH]]
        for index, group in enumerate(groups):
            if index + PREFETCH < len(groups):
                decoding.append(pool.submit(open_image, groups[index + PREFETCH][0].image, max_pixels=max_pixels))
            try:
                decoded: DecodedImage = decoding[index].result()
            except ClipSegError as exc:
                yield from (Outcome(record, error=f"{record.where}: {exc}") for record in group)
                continue
            decoding[index] = None  # free the image once used
            prompts = [prompt_for(record.prompt) for record in group] + list(negatives)
            logits = segmenter.logits([decoded.image], prompts)[0]
            yield from score_image(scores, group, logits, decoded.size, post, len(negatives), refiner, decoded.image,
                                  max_pixels)


def summary_line(summary: dict) -> str:
    """The metrics in one line, for progress bars and logs."""
    def show(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    return (f"mIoU {show(summary['miou'])}, IoU_fg {show(summary['iou_fg'])}, IoU_bin {show(summary['iou_binary'])}, "
            f"AP {show(summary['ap'])} (best threshold {summary['best_threshold']})")
