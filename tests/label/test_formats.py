"""YOLO, VOC and Label Studio datasets: loaded by their users' tools, and decoding to batch's masks
(YOLO's polygons within the IoU the issue asks for)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from helpers import binary_mask

pytestmark = pytest.mark.usefixtures("offline")


def components(mask: np.ndarray) -> list[np.ndarray]:
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return [labels == number for number in range(1, count)]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def polygon_mask(values: list[float], size: tuple[int, int], rounding) -> np.ndarray:
    points = rounding(np.asarray(values, dtype=np.float64).reshape(-1, 2) * np.asarray(size)).astype(np.int32)
    mask = np.zeros((size[1], size[0]), np.uint8)
    cv2.fillPoly(mask, [points], 1)
    return mask.astype(bool)


def test_yolo_polygons_rasterise_back_to_batchs_components(tmp_path: Path, photos: Path, run_label,
                                                           run_batch) -> None:
    assert run_label(photos, tmp_path / "ds", "-p", "tree", "--format", "yolo").code == 0
    assert run_batch(photos, tmp_path / "masks", "-p", "tree").code == 0
    worst, large = 1.0, 0
    for stem, name, size in [("a", "a", (64, 48)), ("c", "c", (80, 48)), ("sub/d", "sub__d", (104, 48))]:
        expected = components(binary_mask(tmp_path / "masks" / f"{stem}.tree.mask.png", size))
        lines = (tmp_path / "ds" / "labels" / "train" / f"{name}.txt").read_text().splitlines()
        assert len(lines) == len(expected)
        for line, component in zip(lines, expected, strict=True):
            cls, *values = line.split()
            assert cls == "0" and len(values) >= 6
            for rounding in (np.round, np.trunc):  # supervision rounds, ultralytics truncates
                found = polygon_mask([float(v) for v in values], size, rounding)
                if component.sum() >= 100:
                    large += 1
                    worst = min(worst, iou(found, component))
    print(f"YOLO polygons: worst IoU {worst:.4f} over {large} rasterisations of components >= 100 px")
    assert large >= 4 and worst >= 0.95


def test_yolo_keeps_every_part_and_hole_in_one_polygon() -> None:
    from clipseg_cli.label.yolo import polygon

    region = np.zeros((60, 90), bool)
    region[5:40, 5:40] = True
    region[15:25, 15:25] = False  # a hole
    region[30:55, 55:85] = True  # a second part
    size = (90, 60)
    values = ((polygon(region) + 0.25) / np.asarray(size)).ravel().tolist()
    for rounding in (np.round, np.trunc):
        found = polygon_mask(values, size, rounding)
        assert iou(found, region) >= 0.95
        assert not found[17:23, 17:23].any()  # the hole stays a hole
        assert found[35:50, 60:80].all()  # the second part is there
    assert iou(polygon_mask(values, size, np.round), components(region)[0]) < 0.7


def test_yolo_semantic_writes_one_line_per_class(tmp_path: Path, photos: Path, run_label) -> None:
    assert run_label(photos / "c.png", tmp_path / "ds", "-p", "car", "-p", "tree", "--format", "yolo",
                     "--semantic", "-t", "0.6").code == 0
    lines = (tmp_path / "ds" / "labels" / "train" / "c.txt").read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["0", "1"]


def test_yolo_loads_in_supervision_with_data_yaml(tmp_path: Path, photos: Path, run_label) -> None:
    import supervision as sv

    assert run_label(photos, tmp_path / "ds", "-p", "car", "-p", "tree", "--format", "yolo",
                     "--split", "0.5,0.5").code == 0
    yaml = (tmp_path / "ds" / "data.yaml").read_text()
    assert yaml == 'train: images/train\nval: images/val\nnc: 2\nnames:\n  0: "car"\n  1: "tree"\n'
    total = 0
    for split in ("train", "val"):
        dataset = sv.DetectionDataset.from_yolo(str(tmp_path / "ds" / "images" / split),
                                                str(tmp_path / "ds" / "labels" / split),
                                                str(tmp_path / "ds" / "data.yaml"), force_masks=True)
        assert dataset.classes == ["car", "tree"]
        total += len(dataset)
        for _, _, detections in dataset:
            assert detections.mask is not None and len(detections) > 0
    assert total == 6


@pytest.mark.slow
def test_voc_pngs_hold_one_class_per_pixel_and_load_in_supervision(tmp_path: Path, photos: Path, run_label,
                                                                   run_batch) -> None:
    import supervision as sv

    assert run_label(photos, tmp_path / "ds", "-p", "car", "-p", "tree", "--format", "voc").code == 0
    assert run_label(photos, tmp_path / "one", "-p", "tree", "--format", "voc").code == 0
    assert run_batch(photos, tmp_path / "masks", "-p", "car", "-p", "tree").code == 0
    for stem, size in [("a", (64, 48)), ("c", (80, 48))]:
        with Image.open(tmp_path / "ds" / "SegmentationClass" / f"{stem}.png") as opened:
            assert opened.mode == "P"
            classes = np.asarray(opened)
        car = binary_mask(tmp_path / "masks" / f"{stem}.car.mask.png", size)
        tree = binary_mask(tmp_path / "masks" / f"{stem}.tree.mask.png", size)
        assert np.array_equal(classes > 0, car | tree)
        assert np.array_equal(classes == 1, car & ~tree | (classes == 1) & tree)  # car alone is car
        both = car & tree
        assert both.any() and (classes[both] == 1).any() and (classes[both] == 2).any()  # overlaps are split
        with Image.open(tmp_path / "one" / "SegmentationObject" / f"{stem}.png") as opened:
            objects = np.asarray(opened)
        expected = components(tree)
        assert objects.max() == len(expected)
        for number, component in enumerate(expected, 1):
            assert np.array_equal(objects == number, component)
    dataset = sv.DetectionDataset.from_pascal_voc(str(tmp_path / "ds" / "JPEGImages"),
                                                  str(tmp_path / "ds" / "Annotations"))
    assert sorted(dataset.classes) == ["car", "tree"] and len(dataset) == 6
    listed = (tmp_path / "ds" / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    assert listed == ["a", "b", "c", "same_jpg", "same_png", "sub__d"]


def test_voc_overlaps_go_to_the_most_probable_class(tmp_path: Path, photos: Path, run_label, run_batch) -> None:
    assert run_label(photos / "a.png", tmp_path / "ds", "-p", "car", "-p", "tree", "--format", "voc").code == 0
    assert run_batch(photos / "a.png", tmp_path / "soft", "-p", "car", "-p", "tree", "--soft").code == 0
    with Image.open(tmp_path / "ds" / "SegmentationClass" / "a.png") as opened:
        classes = np.asarray(opened)
    maps = [np.asarray(Image.open(tmp_path / "soft" / f"a.{name}.mask.png")).astype(int) for name in ("car", "tree")]
    both = (classes > 0) & (maps[0] != maps[1])
    chosen = np.where(maps[0] > maps[1], 1, 2)
    # the soft PNGs are the maps rounded to 8 bits: they decide wherever they differ
    assert both.sum() > 50 and np.array_equal(classes[both & (np.abs(maps[0] - maps[1]) > 1)],
                                              chosen[both & (np.abs(maps[0] - maps[1]) > 1)])


@pytest.mark.slow
def test_labelstudio_brush_rle_is_the_converters_and_decodes_to_the_component(tmp_path: Path, photos: Path,
                                                                               run_label, run_batch) -> None:
    brush = pytest.importorskip("label_studio_converter.brush")
    from clipseg_cli.label.labelstudio import brush_rle

    rng = np.random.default_rng(0)
    for mask in [rng.random((37, 53)) > 0.5, np.ones((300, 300), bool), np.zeros((5, 7), bool),
                 np.pad(np.ones((20, 20), bool), 90)]:
        assert brush_rle(mask) == brush.mask2rle(mask.astype(np.uint8) * 255)
    assert run_label(photos, tmp_path / "ds", "-p", "tree", "--format", "labelstudio").code == 0
    assert run_batch(photos, tmp_path / "masks", "-p", "tree").code == 0
    tasks = json.loads((tmp_path / "ds" / "tasks.json").read_text())
    assert [task["data"]["image"] for task in tasks][:2] == ["/data/local-files/?d=images/train/a.png",
                                                             "/data/local-files/?d=images/train/b.jpg"]
    task = tasks[2]  # c.png
    expected = components(binary_mask(tmp_path / "masks" / "c.tree.mask.png", (80, 48)))
    (prediction,) = task["predictions"]
    assert len(prediction["result"]) == len(expected)
    for region, component in zip(prediction["result"], expected, strict=True):
        assert region["value"]["brushlabels"] == ["tree"] and 0 < region["score"] <= 1
        decoded = brush.decode_rle(region["value"]["rle"]).reshape(48, 80, 4)[:, :, 3]
        assert np.array_equal(decoded == 255, component)
    assert '<Label value="tree"/>' in (tmp_path / "ds" / "config.xml").read_text()
