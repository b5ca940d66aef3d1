"""Instances from masks, classes from -p: the library's small parts, without a model."""

from __future__ import annotations

import numpy as np
import pytest

from clipseg_cli.errors import ClipSegError
from clipseg_cli.label import parse_classes, parse_splits
from clipseg_cli.label.instances import decode_rle, instances, winning_class


def test_instances_are_8_connected_components_with_exact_area_box_and_score() -> None:
    mask = np.zeros((6, 8), bool)
    mask[1, 1] = mask[2, 2] = True  # touching at a corner: one instance
    mask[1:5, 5:8] = True
    mask[2, 6] = False  # a hole, kept
    soft = np.linspace(0, 1, mask.size, dtype=np.float32).reshape(mask.shape)
    first, second = instances(3, mask, soft)
    assert (first.category, first.area, first.bbox) == (3, 2, (1, 1, 2, 2))
    assert first.score == round(float(soft[1, 1] + soft[2, 2]) / 2, 6)
    assert (second.area, second.bbox) == (11, (5, 1, 3, 4))
    assert np.array_equal(decode_rle(second.rle, (8, 6)), mask & (np.arange(8) >= 4)[None, :])
    (whole,) = instances(0, mask, soft, semantic=True)
    assert whole.area == 13 and np.array_equal(decode_rle(whole.rle, (8, 6)), mask)
    assert instances(0, np.zeros((3, 3), bool), np.zeros((3, 3), np.float32)) == []


def test_the_most_probable_class_wins_a_pixel() -> None:
    masks = [np.array([[1, 1, 0]], bool), np.array([[0, 1, 1]], bool)]
    softs = [np.array([[0.9, 0.6, 0.9]], np.float32), np.array([[0.9, 0.7, 0.8]], np.float32)]
    assert winning_class(masks, softs).tolist() == [[1, 2, 2]]


def test_classes_name_a_union_of_prompts_and_never_collide() -> None:
    car, tree = parse_classes(["car=red car, automobile", "tree"])
    assert (car.name, car.prompts, tree.name, tree.prompts) == ("car", ("red car", "automobile"), "tree", ("tree",))
    for specs in (["car", "Car"], ["car", " car =automobile"], ["a=", "b"], ["=x"], []):
        with pytest.raises(ClipSegError):
            parse_classes(specs)


def test_splits_sum_to_one() -> None:
    assert parse_splits("0.8,0.1,0.1").names == ("train", "val", "test")
    assert parse_splits("1").names == ("train",)
    for bad in ("0.8,0.1", "0.5,0.5,0.5", "1,0,0,0", "-0.5,1.5", "0,1", "nan"):
        with pytest.raises(ClipSegError):
            parse_splits(bad)


def test_rle_from_a_components_box_is_pycocotools_encoding_of_the_whole_mask() -> None:
    from clipseg_cli.label.instances import encode_rle

    rng = np.random.default_rng(0)
    corners = np.zeros((5, 4), bool)
    corners[0, 0] = corners[4, 3] = True  # the first and the last pixel
    corners[2, 1:3] = True
    for mask in (corners, rng.random((31, 47)) > 0.6, np.ones((6, 9), bool)):
        found = instances(0, mask, np.ones(mask.shape, np.float32))
        assert found and sum(instance.area for instance in found) == mask.sum()
        for instance in found:
            assert instance.rle == encode_rle(instance.mask((mask.shape[1], mask.shape[0])))


def test_every_model_call_holds_a_full_batch(checkpoint) -> None:
    from clipseg_cli.label.labeller import SharedLogits
    from clipseg_cli.predictor import Segmenter
    from helpers import noise

    segmenter = Segmenter.from_pretrained(checkpoint, precision="fp32")
    images = [noise((40, 32), seed=index) for index in range(4)]
    full = np.asarray(segmenter.logits(images, ["tree"]))
    alone = np.asarray(segmenter.logits(images[:1], ["tree"]))
    assert not np.array_equal(alone[0], full[0])  # the call's shape changes the float sums: padding matters
    shared = SharedLogits(segmenter)
    shared.prompts, shared._keys, shared.batch_size = ["tree"], ["text:tree"], 4
    shared.compute(images[:1])
    assert np.array_equal(np.asarray(shared.logits(images[:1], ["tree"]))[0], full[0])
    shared.compute(images[2:])
    assert all(np.array_equal(np.asarray(shared.logits([images[i]], ["tree"]))[0], full[i]) for i in (2, 3))
