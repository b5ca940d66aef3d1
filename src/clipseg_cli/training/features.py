"""What the decoder consumes during training, computed once: the frozen image tower's activations
per (image, augmentation variant), the prompts' embeddings, and the target masks at model size.

Activations go through the on-disk `ArrayCache`, keyed by the checkpoint, the precision, the
preprocessing, the image's bytes and the variant, so later epochs (and later runs) read them back
by memory map instead of running the image tower again. The variants of an image are computed in
groups of at most VARIANT_GROUP, a group the first time any of its variants is needed, so that
memory stays bounded whatever ``--variants``.
"""

from __future__ import annotations

import shutil
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipseg_cli.fingerprint import file_sha256
from clipseg_cli.imaging.decode import open_image
from clipseg_cli.imaging.writing import remove_stale_temps, temp_folder
from clipseg_cli.training.activation_cache import ArrayCache, cache_key
from clipseg_cli.training.augment import Variant, can_flip, make_variants, object_box
from clipseg_cli.training.manifest import Record, read_mask

RECENT = 32  # activations kept in memory besides the cache (when the cache is full)
VARIANT_GROUP = 8  # variants of one image run through the image tower together


@dataclass(frozen=True)
class ImageEntry:
    """An image of the data with its augmentation variants (variant 0 is the image itself)."""

    path: Path
    sha256: str
    size: tuple[int, int]  # (width, height), upright
    variants: tuple[Variant, ...]


def image_entries(records: Sequence[Record], count: int, seed: int) -> dict[str, ImageEntry]:
    """One entry per image, its variants drawn from the seed and the image's bytes.

    Crops keep the objects of all of the image's masks; flips only where no prompt names a side.

    Returns:
        Entries by image path (as a string).
    """
    by_image: dict[str, list[Record]] = {}
    for record in records:
        by_image.setdefault(str(record.image), []).append(record)
    entries = {}
    for image, group in by_image.items():
        masks = [read_mask(record.mask) for record in group]
        height, width = masks[0].shape
        sha = file_sha256(Path(image))
        rng = np.random.default_rng([seed, int(sha[:15], 16)])
        variants = make_variants((width, height), object_box(masks), can_flip([r.prompt for r in group]), count, rng)
        entries[image] = ImageEntry(Path(image), sha, (width, height), tuple(variants))
    return entries


class Activations:
    """The frozen image tower's activations for (image, variant), cached on disk."""

    def __init__(self, segmenter, cache: ArrayCache) -> None:
        self.segmenter = segmenter
        self.cache = cache
        self.recent: OrderedDict[str, np.ndarray] = OrderedDict()
        self.identity = {**segmenter.identity, "preprocessing": repr(segmenter.preprocessing),
                         "layers": list(segmenter.model.config.extract_layers)}
        self.computed = 0  # image-tower passes (one per variant) made by this object

    def key(self, entry: ImageEntry, variant: int) -> str:
        return cache_key(kind="activations", model=self.identity, image=entry.sha256,
                         variant=entry.variants[variant].describe())

    def get(self, entry: ImageEntry, variant: int) -> np.ndarray:
        """Activations of one variant of an image; its group of variants is computed on a miss.

        Returns:
            float32 array (layers, L, C), read-only.
        """
        key = self.key(entry, variant)
        found = self.recent.get(key)
        if found is None:
            found = self.cache.get(key)
        if found is None:
            start = variant - variant % VARIANT_GROUP
            found = self._compute(entry, start)[variant - start]
        self._remember(key, found)
        return found

    def _remember(self, key: str, array: np.ndarray) -> None:
        self.recent[key] = array
        self.recent.move_to_end(key)
        while len(self.recent) > RECENT:
            self.recent.popitem(last=False)

    @torch.inference_mode()
    def _compute(self, entry: ImageEntry, start: int) -> list[np.ndarray]:
        """Run the image tower once on the variants ``start .. start + VARIANT_GROUP`` of an image and store them.

        Returns:
            Their activations, float32 (layers, L, C) each.
        """
        image = open_image(entry.path).image
        segmenter = self.segmenter
        group = entry.variants[start : start + VARIANT_GROUP]
        pixels = segmenter.preprocessing([variant.image(image) for variant in group])
        layers = segmenter.model.encode_image(pixels.to(segmenter.runner.device, segmenter.runner.dtype))
        stacked = torch.stack(layers, dim=1).float().cpu().numpy()  # K x layers x L x C
        self.computed += len(group)
        arrays = []
        for variant, array in enumerate(stacked, start=start):
            key = self.key(entry, variant)
            self.cache.put(key, array)
            arrays.append(array)
            self._remember(key, array)
        return arrays


def embed_prompts(segmenter, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    """The frozen text tower's embedding of each distinct prompt, once.

    Returns:
        float32 E-vectors on the CPU by prompt text.
    """
    distinct = list(dict.fromkeys(prompts))
    embedded = segmenter.embed(distinct).float().cpu()
    return dict(zip(distinct, embedded, strict=True))


class Targets:
    """Every record's mask at model size for every variant: uint8 0..255, in one memory-mapped file.

    The file is temporary: in a temporary folder of the cache folder (named as `atomic_write` names
    its files), removed by `close`, and by the next run when a killed run left it.
    """

    def __init__(self, records: Sequence[Record], entries: dict[str, ImageEntry], count: int,
                 size: tuple[int, int], folder: Path) -> None:
        height, width = size
        remove_stale_temps(folder)  # of runs that were killed
        self.folder = temp_folder(folder / "targets")
        self.path = self.folder / "targets.u8"
        try:
            self.array = np.memmap(self.path, dtype=np.uint8, mode="w+",
                                   shape=(max(1, len(records)), count, height, width))
            for index, record in enumerate(records):
                mask = read_mask(record.mask)
                for variant, crop in enumerate(entries[str(record.image)].variants):
                    self.array[index, variant] = model_sized(crop.mask(mask), (width, height))
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise

    def get(self, index: int, variant: int) -> np.ndarray:
        """Returns: float32 HxW target in [0, 1] (the mask's fraction of each model pixel)."""
        return self.array[index, variant].astype(np.float32) / 255

    def close(self) -> None:
        del self.array
        shutil.rmtree(self.folder, ignore_errors=True)


def model_sized(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A bool mask resized to the model's input (width, height) by area averaging, as 0..255.

    Returns:
        uint8 HxW.
    """
    image = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8) * 255)
    return np.asarray(image.resize(size, resample=Image.Resampling.BOX))
