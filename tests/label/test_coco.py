"""COCO datasets: each annotation is exactly a component of the mask `clipseg batch` writes, loadable by
pycocotools and supervision; classes as prompt unions; images copied, linked or stored upright."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from helpers import binary_mask, noise, save

pytestmark = pytest.mark.usefixtures("offline")


def components(mask: np.ndarray) -> list[np.ndarray]:
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return [labels == number for number in range(1, count)]


def batch_mask(out: Path, stem: str, label: str, size: tuple[int, int]) -> np.ndarray:
    return binary_mask(out / f"{stem}.{label}.mask.png", size)


@pytest.mark.slow
def test_each_annotation_is_a_component_of_batchs_mask(tmp_path: Path, photos: Path, run_label, run_batch) -> None:
    from pycocotools.coco import COCO

    done = run_label(photos, tmp_path / "ds", "-p", "car=red car,car", "-p", "tree", "--min-area", "3")
    assert done.code == 0, done.stderr
    batch_union = run_batch(photos, tmp_path / "union", "-p", "red car", "-p", "car", "--union", "--min-area", "3")
    batch_tree = run_batch(photos, tmp_path / "tree", "-p", "tree", "--min-area", "3")
    assert batch_union.code == batch_tree.code == 0
    union_label = next(p.name for p in (tmp_path / "union").glob("a.*.mask.png")).split(".")[1]
    coco = COCO(str(tmp_path / "ds" / "annotations" / "instances_train.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["car", "tree"]
    checked = 0
    for image in coco.loadImgs(coco.getImgIds()):
        key = image["file_name"].rsplit(".", 1)[0].replace("__", "/")
        folder, stem = (key.rsplit("/", 1) if "/" in key else ("", key))
        stem = {"same_png": "same_png", "same_jpg": "same_jpg"}.get(stem, stem)
        size = (image["width"], image["height"])
        for category, out, label in [(1, tmp_path / "union", union_label), (2, tmp_path / "tree", "tree")]:
            expected = components(batch_mask(out / folder, stem, label, size))
            found = coco.loadAnns(coco.getAnnIds(imgIds=image["id"], catIds=[category]))
            assert len(found) == len(expected) > 0
            for annotation, component in zip(found, expected, strict=True):
                decoded = coco.annToMask(annotation).astype(bool)
                assert np.array_equal(decoded, component)
                assert annotation["area"] == component.sum()
                rows, cols = np.flatnonzero(component.any(1)), np.flatnonzero(component.any(0))
                assert annotation["bbox"] == [cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1]
                assert 0.5 <= annotation["score"] <= 1
                checked += 1
    assert checked > 12  # several images, classes and parts were compared


def test_the_union_class_differs_from_its_prompts_alone(tmp_path: Path, photos: Path, run_label) -> None:
    # the fixture tells a union from one prompt: else the test above would pass with the union ignored
    one = run_label(photos, tmp_path / "one", "-p", "car=red car", "--semantic")
    both = run_label(photos, tmp_path / "both", "-p", "car=red car,tree", "--semantic")
    assert one.code == both.code == 0
    read = [json.loads((tmp_path / name / "annotations" / "instances_train.json").read_text())["annotations"]
            for name in ("one", "both")]
    assert [a["area"] for a in read[0]] != [a["area"] for a in read[1]]


def test_semantic_gives_one_region_per_class_with_every_part(tmp_path: Path, photos: Path, run_label,
                                                             run_batch) -> None:
    from pycocotools.coco import COCO

    assert run_label(photos / "c.png", tmp_path / "ds", "-p", "tree", "--semantic", "-t", "0.6").code == 0
    assert run_batch(photos / "c.png", tmp_path / "masks", "-p", "tree", "-t", "0.6").code == 0
    coco = COCO(str(tmp_path / "ds" / "annotations" / "instances_train.json"))
    (annotation,) = coco.loadAnns(coco.getAnnIds())
    mask = batch_mask(tmp_path / "masks", "c", "tree", (80, 48))
    assert len(components(mask)) > 1
    assert np.array_equal(coco.annToMask(annotation).astype(bool), mask)


def test_supervision_loads_the_dataset(tmp_path: Path, photos: Path, run_label) -> None:
    import supervision as sv

    assert run_label(photos, tmp_path / "ds", "-p", "car", "-p", "tree").code == 0
    dataset = sv.DetectionDataset.from_coco(str(tmp_path / "ds" / "images" / "train"),
                                            str(tmp_path / "ds" / "annotations" / "instances_train.json"),
                                            force_masks=True)
    assert dataset.classes == ["car", "tree"] and len(dataset) == 6
    coco = json.loads((tmp_path / "ds" / "annotations" / "instances_train.json").read_text())
    assert sum(len(detections) for _, _, detections in dataset) == len(coco["annotations"])


def test_exif_rotated_images_are_stored_upright(tmp_path: Path, run_label) -> None:
    image = noise((60, 40), seed=3)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show
    save(image, tmp_path / "in" / "turned.jpg", exif=exif, quality=95)
    assert run_label(tmp_path / "in", tmp_path / "ds", "-p", "tree", "--link").code == 0
    stored = tmp_path / "ds" / "images" / "train" / "turned.jpg"
    assert not stored.is_symlink()  # a link would show the loader the sideways pixels
    with Image.open(stored) as opened:
        assert opened.size == (40, 60) and opened.getexif().get(0x0112, 1) == 1
    coco = json.loads((tmp_path / "ds" / "annotations" / "instances_train.json").read_text())
    assert (coco["images"][0]["width"], coco["images"][0]["height"]) == (40, 60)


def test_images_are_copied_or_linked(tmp_path: Path, photos: Path, run_label) -> None:
    assert run_label(photos, tmp_path / "copied", "-p", "tree").code == 0
    assert run_label(photos, tmp_path / "linked", "-p", "tree", "--link").code == 0
    copied, linked = tmp_path / "copied" / "images" / "train", tmp_path / "linked" / "images" / "train"
    assert sorted(p.name for p in copied.iterdir()) == ["a.png", "b.jpg", "c.png", "same_jpg.jpg", "same_png.png",
                                                       "sub__d.png"]
    assert (copied / "sub__d.png").read_bytes() == (photos / "sub" / "d.png").read_bytes()
    assert not (copied / "a.png").is_symlink()
    assert (linked / "sub__d.png").is_symlink() and (linked / "sub__d.png").resolve() == (photos / "sub" / "d.png")
