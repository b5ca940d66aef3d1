"""Fine-tune CLIPSeg's decoder on a manifest, with both CLIP towers frozen, as the paper trained it.

Binary cross-entropy on the logits at the model's input size, AdamW, the learning rate decaying
along a cosine from ``lr`` to ``lr / 10``; fp32 weights, with bf16 products (autocast) when the
towers run at a fast precision (the paper trained with amp). The frozen towers' outputs (image activations per
augmentation variant, prompt embeddings) are computed once (`features`), so that after the first
epoch an epoch costs the decoder alone. After each epoch the validation records are scored as
``clipseg eval`` scores them; the best checkpoint by validation mIoU is the one in OUT_DIR.
Every file is replaced atomically, so an interrupted run leaves the last complete checkpoint,
and ``resume`` continues from the last complete epoch with the same result as an uninterrupted run.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from clipseg_cli.errors import ClipSegError
from clipseg_cli.imaging.writing import atomic_write, temp_folder
from clipseg_cli.postprocess import PostProcess
from clipseg_cli.training.activation_cache import ArrayCache
from clipseg_cli.training.checkpoint_io import copy_processing_files, load_decoder, save_weights
from clipseg_cli.training.evaluate import group_by_image, score_image
from clipseg_cli.training.features import Activations, ImageEntry, Targets, embed_prompts, image_entries
from clipseg_cli.training.manifest import Record
from clipseg_cli.training.metrics import Scores

STATE_FILE = "resume.pt"  # the last complete epoch: decoder, optimizer, history
LOG_FILE = "training.json"
FINAL_LR_FACTOR = 0.1  # the cosine decays from lr to lr / 10 (the paper: 1e-3 -> 1e-4)


@dataclass(frozen=True)
class TrainOptions:
    """How to train; everything here is recorded in training.json and must match for ``--resume``."""

    epochs: int = 10
    steps: int | None = None  # total optimizer steps; overrides epochs
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.01
    seed: int = 0
    variants: int = 2  # per image: the image itself and variants - 1 random crops/flips
    threshold: float = 0.4  # for the validation IoUs


@dataclass
class Data:
    """Training and validation records with what the decoder needs of them."""

    train: list[Record]
    val: list[Record]
    entries: dict[str, ImageEntry]
    embeddings: dict[str, torch.Tensor]
    description: dict


def split_by_image(records: Sequence[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Hold out about ``fraction`` of the images (all their records) for validation, by the seed.

    Returns:
        (train records, validation records); at least one image of each when there are two or more.
    """
    groups = group_by_image(records)
    if fraction <= 0 or len(groups) < 2:
        return list(records), []
    count = min(len(groups) - 1, max(1, round(fraction * len(groups))))
    held = set(np.random.default_rng(seed).permutation(len(groups))[:count].tolist())
    train = [r for i, g in enumerate(groups) if i not in held for r in g]
    val = [r for i, g in enumerate(groups) if i in held for r in g]
    return train, val


def mixed_precision(dtype: torch.dtype, device: torch.device) -> bool:
    """Train the decoder in mixed bf16 precision when the image tower runs at a fast precision and the
    device has bf16 (fp32 stays exact; fp16 would need loss scaling).
    """
    if dtype == torch.float32:
        return False
    return device.type == "cpu" or (device.type == "cuda" and torch.cuda.is_bf16_supported())


def cosine_lr(step: int, total: int, lr: float) -> float:
    """The learning rate at ``step`` of ``total``: a cosine from lr down to lr * FINAL_LR_FACTOR."""
    final = lr * FINAL_LR_FACTOR
    return final + 0.5 * (lr - final) * (1 + math.cos(math.pi * min(step, total) / max(1, total)))


class Trainer:
    """Trains a decoder on prepared data and keeps OUT_DIR a complete checkpoint at every moment."""

    def __init__(self, segmenter, base: Path, data: Data, out_dir: Path, options: TrainOptions,
                 cache: ArrayCache, log: Callable[[str], None], progress: bool) -> None:
        self.segmenter = segmenter
        self.base = base
        self.data = data
        self.out_dir = out_dir  # where files are written: a temporary folder until epoch 0 is complete
        self.final_dir = out_dir
        self.options = options
        self.log = log
        self.progress = progress
        self.decoder = load_decoder(base).to(segmenter.runner.device)
        self.activations = Activations(segmenter, cache)
        height, width = segmenter.preprocessing.size
        patch = segmenter.model.config.patch_size
        self.grid = (height // patch, width // patch)
        self.mixed = mixed_precision(segmenter.runner.dtype, segmenter.runner.device)
        self.optimizer = torch.optim.AdamW(self.decoder.parameters(), lr=options.lr,
                                           weight_decay=options.weight_decay)
        per_epoch = max(1, math.ceil(len(data.train) / options.batch_size))
        self.total_steps = options.steps or options.epochs * per_epoch
        self.epochs = math.ceil(self.total_steps / per_epoch)
        self.step = 0
        self.history: list[dict] = []
        self.best: float | None = None
        self.best_epoch = 0

    def run(self, resume: bool) -> dict:
        """Train to the end (or continue a run with ``resume``), saving after every epoch.

        Returns:
            The training log (as written to training.json).
        """
        if resume:
            self._load_state()
        else:
            self._start()
        targets = Targets(self.data.train, self.data.entries, self.options.variants,
                          self.segmenter.preprocessing.size, self.activations.cache.folder)
        try:
            while self.step < self.total_steps:
                epoch = len(self.history)
                started = time.perf_counter()
                loss = self._train_epoch(epoch, targets)
                self._finish_epoch(epoch, loss, time.perf_counter() - started)
        finally:
            targets.close()
        return self._log_record()

    def _start(self) -> None:
        """Write the base model as epoch 0 into a temporary folder, then move it to OUT_DIR whole (an
        empty OUT_DIR is replaced): OUT_DIR is a complete checkpoint or not there at all.
        """
        final = self.final_dir
        with self._saving():
            final.parent.mkdir(parents=True, exist_ok=True)
            self.out_dir = temp_folder(final)
        try:
            with self._saving():
                copy_processing_files(self.base, self.out_dir)
            self._finish_epoch(0, None, 0.0)  # the base model is epoch 0
            with self._saving():
                os.replace(self.out_dir, final)
        finally:
            shutil.rmtree(self.out_dir, ignore_errors=True)
            self.out_dir = final

    @contextmanager
    def _saving(self) -> Iterator[None]:
        """A file system that refuses a file of the checkpoint (full disk, quota, file size limit) is one line."""
        try:
            yield
        except OSError as exc:
            raise ClipSegError(f"--output-dir {self.final_dir}: cannot write the "
                               f"checkpoint ({exc.strerror or exc}); the folder holds the last complete epoch, "
                               "if any (free some space, then --resume or start again)") from None

    def _train_epoch(self, epoch: int, targets: Targets) -> float:
        """One pass over the training records in a seeded order, each with a seeded variant.

        Returns:
            The mean loss.
        """
        from tqdm import tqdm

        rng = np.random.default_rng([self.options.seed, epoch])
        order = rng.permutation(len(self.data.train))
        variants = rng.integers(0, self.options.variants, len(self.data.train))
        batches = [order[i : i + self.options.batch_size] for i in range(0, len(order), self.options.batch_size)]
        batches = batches[: self.total_steps - self.step]
        self.decoder.train()
        losses = []
        last = self.history[-1]["val"] if self.history else None
        shown = f" (val mIoU {last['miou']:.3f})" if last and last["miou"] is not None else ""
        bar = tqdm(batches, desc=f"epoch {epoch}/{self.epochs}{shown}", unit="step", leave=False,
                   disable=not self.progress)
        for batch in bar:
            losses.append(self._step(batch, variants[batch], targets))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        bar.close()
        return float(np.mean(losses)) if losses else float("nan")

    def _step(self, indices: np.ndarray, variants: np.ndarray, targets: Targets) -> float:
        """One optimizer step on a batch of records.

        Returns:
            The batch's loss.
        """
        records = [self.data.train[i] for i in indices]
        features = np.stack([self.activations.get(self.data.entries[str(r.image)], int(v))
                             for r, v in zip(records, variants, strict=True)])  # B x layers x L x C
        features = torch.from_numpy(features).to(self.segmenter.runner.device)
        conditional = torch.stack([self.data.embeddings[r.prompt] for r in records]).to(self.segmenter.runner.device)
        truth = torch.from_numpy(np.stack([targets.get(int(i), int(v)) for i, v in zip(indices, variants,
                                                                                          strict=True)]))
        for group in self.optimizer.param_groups:
            group["lr"] = cosine_lr(self.step, self.total_steps, self.options.lr)
        with self._autocast():
            logits = self.decoder(list(features.unbind(1)), conditional, self.grid)
        loss = F.binary_cross_entropy_with_logits(logits.float(), truth.to(logits.device))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return loss.item()

    @torch.no_grad()
    def validate(self) -> dict | None:
        """Score the validation records as ``clipseg eval`` does, from cached activations.

        Returns:
            The metrics summary, or None without validation records.
        """
        if not self.data.val:
            return None
        self.decoder.eval()
        scores = Scores(self.options.threshold)
        post = PostProcess(threshold=self.options.threshold)
        for group in group_by_image(self.data.val):
            entry = self.data.entries[str(group[0].image)]
            features = torch.from_numpy(np.array(self.activations.get(entry, 0))[None]).to(self.segmenter.runner.device)
            conditional = torch.stack([self.data.embeddings[r.prompt] for r in group]).to(self.segmenter.runner.device)
            with self._autocast():
                logits = self.decoder(list(features.unbind(1)), conditional, self.grid).float().cpu()
            score_image(scores, group, logits, entry.size, post)
        return scores.summary()

    def _autocast(self) -> torch.autocast:
        """bf16 matrix products with fp32 weights (mixed precision, as the paper's amp) unless fp32."""
        return torch.autocast(self.segmenter.runner.device.type, dtype=torch.bfloat16, enabled=self.mixed)

    def _finish_epoch(self, epoch: int, loss: float | None, seconds: float) -> None:
        """Validate, keep the checkpoint when it is the best so far, save the state and the log.

        Arguments:
            seconds: how long the epoch's training took (without validation and saving).
        """
        val = self.validate()
        miou = val["miou"] if val else None
        improved = epoch == 0 or (miou is not None and (self.best is None or miou > self.best)) or val is None
        self.history.append({"epoch": epoch, "steps": self.step, "loss": loss, "val": val,
                             "seconds": round(seconds, 3),
                             "image_tower_passes": self.activations.computed})
        with self._saving():
            if improved:
                save_weights(self.base, self.decoder, self.out_dir, {"epoch": str(epoch)})
                self.best, self.best_epoch = miou, epoch
            self._save_state()
            atomic_write(self.out_dir / LOG_FILE,
                         lambda h: h.write(json.dumps(self._log_record(), indent=2).encode()))
        shown = "n/a" if miou is None else f"{miou:.4f}"
        note = " (kept)" if improved else ""
        self.log(f"epoch {epoch}/{self.epochs}: loss {'-' if loss is None else f'{loss:.4f}'}, "
                 f"val mIoU {shown}{note}")

    def _log_record(self) -> dict:
        improved = self.best_epoch > 0 if self.data.val else None  # None: nothing to tell without validation
        return {**self.data.description, "options": asdict(self.options), "epochs": self.history,
                "best_epoch": self.best_epoch, "best_val_miou": self.best, "improved": improved}

    def _save_state(self) -> None:
        state = {"decoder": self.decoder.state_dict(), "optimizer": self.optimizer.state_dict(), "step": self.step,
                 "history": json.dumps(self.history), "best": self.best, "best_epoch": self.best_epoch,
                 "run": json.dumps(self._identity())}
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write(self.out_dir / STATE_FILE, lambda handle: handle.write(buffer.getvalue()))

    def _identity(self) -> dict:
        """What must be the same for ``--resume`` to continue a run: data, base and options."""
        return {"data": self.data.description, "options": asdict(self.options)}

    def _load_state(self) -> None:
        path = self.out_dir / STATE_FILE
        if not path.is_file():
            raise ClipSegError(f"{self.out_dir}: no {STATE_FILE} to resume from; start without --resume")
        try:
            state = torch.load(path, map_location=self.segmenter.runner.device, weights_only=True)
            saved = json.loads(state["run"])
        except Exception as exc:  # a damaged file raises many types
            raise ClipSegError(f"{path}: cannot read the training state ({type(exc).__name__}); "
                               "start afresh in another folder") from None
        ours = json.loads(json.dumps(self._identity()))
        for part in ("data", "options"):
            if saved[part] != ours[part]:
                changed = sorted(k for k in saved[part].keys() | ours[part].keys()
                                 if saved[part].get(k) != ours[part].get(k))
                raise ClipSegError(f"{self.out_dir}: was trained with other {part} ({', '.join(changed)} differ); "
                                   "resume with the same manifest, weights and options, or train into another folder")
        self.decoder.load_state_dict(state["decoder"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.best, self.best_epoch = state["step"], state["best"], state["best_epoch"]
        self.history = json.loads(state["history"])
        self.log(f"resuming after epoch {len(self.history) - 1} (step {self.step} of {self.total_steps})")


def prepare(segmenter, train: list[Record], val: list[Record], options: TrainOptions, description: dict) -> Data:
    """Variants of every image and the embedding of every prompt; frees the text tower afterwards.

    Returns:
        The data the Trainer uses.
    """
    entries = image_entries(val, 1, options.seed)  # validation needs the image itself only
    entries.update(image_entries(train, options.variants, options.seed))
    embeddings = embed_prompts(segmenter, [r.prompt for r in [*train, *val]])
    segmenter.drop_unused_layers()
    return Data(train, val, entries, embeddings, description)
