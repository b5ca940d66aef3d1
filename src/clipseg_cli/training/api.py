"""The two entry points a script or the CLI calls: `evaluate` a model on a manifest, `train` a decoder.

    from clipseg_cli.training.api import evaluate, train
    summary = evaluate("val.jsonl", weights="CIDAS/clipseg-rd64-refined", precision="fp32").summary()
    log = train("train.jsonl", weights="CIDAS/clipseg-rd64-refined", out_dir="tuned/")
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from clipseg_cli import LOGGER
from clipseg_cli.constants import DEFAULT_MAX_PIXELS, DEFAULT_MODEL
from clipseg_cli.errors import ClipSegError
from clipseg_cli.postprocess import PostProcess
from clipseg_cli.prompts import text_prompt
from clipseg_cli.run.inputs import folder_problem
from clipseg_cli.training.evaluate import Outcome, evaluate_segmenter
from clipseg_cli.training.manifest import Manifest, Record, check_files, read_manifest
from clipseg_cli.training.metrics import Scores
from clipseg_cli.training.trainer import STATE_FILE, Trainer, TrainOptions, prepare, split_by_image

LOG = logging.getLogger(LOGGER)

DEFAULT_CACHE_BYTES = 10 << 30


def _stderr(message: str) -> None:
    LOG.warning(message.removeprefix("clipseg: "))


class Evaluation:
    """Scores a model on a manifest's records; records whose files are unusable are skipped and named."""

    def __init__(self, manifest: Manifest, segmenter, post: PostProcess, *, templates: Sequence[str] = (),
                 negatives: Sequence[str] = (), max_pixels: int = DEFAULT_MAX_PIXELS, refiner=None) -> None:
        self.manifest = manifest
        self.segmenter = segmenter
        self.post = post
        self.templates = list(templates)
        self.negatives = [text_prompt(n, templates) for n in negatives]
        self.max_pixels = max_pixels
        self.refiner = refiner
        self.scores = Scores(post.threshold)
        self.skipped = list(manifest.problems)

    def outcomes(self) -> Iterator[Outcome]:
        """Score every record (grouped by image); skipped ones carry their one-line reason.

        Returns:
            An iterator of Outcomes.
        """
        for outcome in evaluate_segmenter(self.segmenter, self.manifest.records, self.scores, self.post,
                                          prompt_for=lambda text: text_prompt(text, self.templates),
                                          negatives=self.negatives, max_pixels=self.max_pixels,
                                          refiner=self.refiner):
            if outcome.error:
                self.skipped.append(outcome.error)
            yield outcome

    def summary(self) -> dict:
        """Returns: the metrics (see `Scores.summary`) with ``skipped``, the count of unusable records."""
        return {**self.scores.summary(), "skipped": len(self.skipped)}


def evaluate(manifest: str | Path, *, weights: str | Path = DEFAULT_MODEL, device: str = "auto",
             precision: str = "auto", revision: str | None = None, offline: bool | None = None,
             post: PostProcess | None = None, templates: Sequence[str] = (), negatives: Sequence[str] = (),
             max_pixels: int = DEFAULT_MAX_PIXELS, refine: str = "none", sam_weights: str | None = None,
             progress: bool = True) -> Evaluation:
    """Load the model once and prepare the scoring of a manifest (run it with ``outcomes()``).

    Arguments:
        refine: ``--refine`` (none, guided, matting or sam), applied to each map as ``batch`` does.

    Returns:
        An Evaluation.
    """
    from clipseg_cli.predictor import Segmenter
    from clipseg_cli.refine import check_available, load_refiner

    check_available(refine)
    parsed = read_manifest(manifest)
    if not parsed.records:
        raise ClipSegError(f"{manifest}: no usable records (each needs image, prompt and mask)")
    segmenter = Segmenter.from_pretrained(weights, device=device, precision=precision, offline=offline,
                                          revision=revision, progress=progress)
    refiner = load_refiner(refine, sam_weights=sam_weights, device=segmenter.device_type, offline=offline,
                           progress=progress)
    return Evaluation(parsed, segmenter, post or PostProcess(), templates=templates, negatives=negatives,
                      max_pixels=max_pixels, refiner=refiner)


def checked_records(path: str | Path, skip_bad: bool, log: Callable[[str], None],
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Manifest, list[Record]]:
    """A manifest's records whose files are all usable; every bad record is named in one line.

    Returns:
        (the manifest, its good records); raises ClipSegError for bad records unless ``skip_bad``.
    """
    manifest = read_manifest(path)
    good, problems = check_files(manifest.records, max_pixels)
    problems = manifest.problems + problems
    for problem in problems:
        log(problem)
    if problems and not skip_bad:
        raise ClipSegError(f"{path}: {len(problems)} bad record(s), named above; fix them or pass --skip-bad")
    if not good:
        raise ClipSegError(f"{path}: no usable records")
    return manifest, good


def train(manifest: str | Path, *, weights: str | Path = DEFAULT_MODEL, out_dir: str | Path,
          options: TrainOptions | None = None, val: str | Path | None = None, val_fraction: float = 0.1,
          resume: bool = False, skip_bad: bool = False, device: str = "auto", precision: str = "auto",
          revision: str | None = None, offline: bool | None = None, cache_dir: str | Path | None = None,
          cache_bytes: int = DEFAULT_CACHE_BYTES, threads: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
          log: Callable[[str], None] = _stderr, progress: bool = True) -> dict:
    """Fine-tune the decoder of ``weights`` on a manifest; OUT_DIR becomes a checkpoint (best by val mIoU).

    Arguments:
        max_pixels: the largest image or mask (``--max-pixels``), checked before decoding.
        threads: torch's CPU threads while training (restored afterwards); None keeps torch's setting.
            Small decoders train much faster on one thread when other processes load the CPU.

    Returns:
        The training log written to OUT_DIR/training.json.
    """
    import torch

    from clipseg_cli.checkpoints.loading import checkpoint_dir
    from clipseg_cli.predictor import Segmenter
    from clipseg_cli.training.activation_cache import ArrayCache, default_cache_dir

    options = options or TrainOptions()
    out = Path(out_dir)
    problem = folder_problem(out)
    if problem:
        raise ClipSegError(f"--output-dir {out}: {problem}")
    if not resume and out.exists() and any(out.iterdir()):
        hint = "continue it with --resume" if (out / STATE_FILE).is_file() else "give an empty or new folder"
        raise ClipSegError(f"--output-dir {out}: not empty; {hint}")
    parsed, records = checked_records(manifest, skip_bad, log, max_pixels)
    if val is not None:
        val_manifest, val_records = checked_records(val, skip_bad, log, max_pixels)
        train_records, held = records, val_records
        val_info = {"manifest": str(val), "sha256": val_manifest.sha256, "records": len(val_records)}
    else:
        train_records, held = split_by_image(records, val_fraction, options.seed)
        val_info = {"fraction": val_fraction, "records": len(held)}
    segmenter = Segmenter.from_pretrained(weights, device=device, precision=precision, offline=offline,
                                          revision=revision, progress=progress, backend="torch")  # gradients
    base = checkpoint_dir(weights, offline=offline, revision=revision, progress=False)
    description = {
        "base": {"weights": str(weights), "identity": segmenter.identity["weights"],
                 "precision": segmenter.identity["precision"]},
        "data": {"manifest": str(manifest), "sha256": parsed.sha256, "records": len(train_records),
                 "skipped": len(parsed.records) + len(parsed.problems) - len(records)},
        "val": val_info,
    }
    data = prepare(segmenter, train_records, held, options, description)
    cache = ArrayCache(Path(cache_dir) if cache_dir else default_cache_dir(), cache_bytes, log)
    trainer = Trainer(segmenter, base, data, out, options, cache, log, progress)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        return trainer.run(resume)
    finally:
        torch.set_num_threads(previous)
