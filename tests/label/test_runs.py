"""Runs of clipseg label: resumable and byte-identical, stable splits, shards merged into one machine's bytes,
bad input as batch, set-up errors before any model loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers import noise, save

pytestmark = pytest.mark.usefixtures("offline")

CLASSES = ["-p", "car=red car,car", "-p", "tree"]


def dataset_files(folder: Path) -> dict[str, bytes]:
    """Every file of a dataset by relative path (links by their target), leaving out shard manifests."""
    return {path.relative_to(folder).as_posix(): (str(path.readlink()).encode() if path.is_symlink()
                                                  else path.read_bytes())
            for path in sorted(folder.rglob("*"))
            if (path.is_file() or path.is_symlink()) and "shards" not in path.parts}


def summary(stderr: str) -> str:
    return next(line for line in stderr.splitlines() if line.startswith("clipseg:"))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["coco", "yolo", "voc", "labelstudio"])
def test_a_resumed_run_writes_the_bytes_of_an_uninterrupted_one(tmp_path: Path, photos: Path, run_label,
                                                                fmt: str) -> None:
    whole = run_label(photos, tmp_path / "whole", *CLASSES, "--format", fmt, "--split", "0.5,0.5", "--preview", "3")
    assert whole.code == 0, whole.stderr
    # what a killed run leaves: the records and files of the images done so far, whole; no index files
    shutil.copytree(tmp_path / "whole", tmp_path / "killed", symlinks=True)
    records = sorted((tmp_path / "killed" / ".clipseg-label" / "records").rglob("*.json"))
    for record in records[:3]:
        for relative in json.loads(record.read_text())["files"]:
            (tmp_path / "killed" / relative).unlink()
        record.unlink()
    kept = set(dataset_files(tmp_path / "killed"))
    for path in sorted((tmp_path / "killed").iterdir()):
        if path.is_file():
            path.unlink()
    for index in ("annotations", "ImageSets"):
        shutil.rmtree(tmp_path / "killed" / index, ignore_errors=True)
    assert len(kept - set(dataset_files(tmp_path / "killed"))) > 0
    resumed = run_label(photos, tmp_path / "killed", *CLASSES, "--format", fmt, "--split", "0.5,0.5",
                        "--preview", "3")
    assert resumed.code == 0, resumed.stderr
    assert "3 image(s) labelled, 3 up to date" in summary(resumed.stderr)
    assert dataset_files(tmp_path / "killed") == dataset_files(tmp_path / "whole")


@pytest.mark.slow
def test_a_rerun_with_images_added_labels_only_those_and_moves_none(tmp_path: Path, photos: Path, run_label) -> None:
    first = run_label(photos, tmp_path / "ds", *CLASSES, "--split", "0.5,0.5")
    assert first.code == 0
    before = {p.name: p.parent.name for p in (tmp_path / "ds" / "images").rglob("*.*")}
    assert set(before.values()) == {"train", "val"}
    for index in range(3):
        save(noise((50, 40), seed=10 + index), photos / f"new{index}.png")
    added = run_label(photos, tmp_path / "ds", *CLASSES, "--split", "0.5,0.5")
    assert added.code == 0 and "3 image(s) labelled, 6 up to date" in summary(added.stderr)
    after = {p.name: p.parent.name for p in (tmp_path / "ds" / "images").rglob("*.*")}
    assert {name: after[name] for name in before} == before and len(after) == 9
    fresh = run_label(photos, tmp_path / "fresh", *CLASSES, "--split", "0.5,0.5")
    assert fresh.code == 0 and dataset_files(tmp_path / "ds") == dataset_files(tmp_path / "fresh")
    again = run_label(photos, tmp_path / "ds", *CLASSES, "--split", "0.5,0.5", "-t", "0.55")
    assert "9 image(s) labelled, 0 up to date" in summary(again.stderr)  # a setting changed: all relabelled


def test_the_split_follows_the_content_not_the_name(tmp_path: Path, run_label) -> None:
    from clipseg_cli.label import parse_splits

    for index in range(8):
        save(noise((30, 30), seed=index), tmp_path / "in" / f"{index}.png")
        shutil.copy(tmp_path / "in" / f"{index}.png", tmp_path / "in" / f"copy{index}.png")
    assert run_label(tmp_path / "in", tmp_path / "ds", "-p", "tree", "--split", "0.4,0.3,0.3").code == 0
    placed = {p.stem: p.parent.name for p in (tmp_path / "ds" / "images").rglob("*.png")}
    assert all(placed[str(index)] == placed[f"copy{index}"] for index in range(8))
    assert set(placed.values()) == {"train", "val", "test"}
    assert parse_splits("0.4,0.3,0.3").of("0" * 64) == "train" and parse_splits("0.4,0.3,0.3").of("f" * 64) == "test"
    for split in ("train", "val", "test"):
        found = json.loads((tmp_path / "ds" / "annotations" / f"instances_{split}.json").read_text())
        assert sorted(image["file_name"].split(".")[0] for image in found["images"]) == sorted(
            name for name, where in placed.items() if where == split)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["coco", "yolo"])
def test_shards_merge_into_the_bytes_of_one_machine(tmp_path: Path, photos: Path, run_label, fmt: str) -> None:
    common = [*CLASSES, "--format", fmt, "--split", "0.5,0.5", "--preview", "2"]
    assert run_label(photos, tmp_path / "one", *common).code == 0
    for index in range(3):
        part = run_label(photos, tmp_path / f"part{index}", *common, "--shard", f"{index}/3")
        assert part.code == 0 and f"shard {index}/3" in summary(part.stderr)
        assert not (tmp_path / f"part{index}" / "preview.png").exists()
    from helpers import clipseg

    missing = clipseg("label", tmp_path / "part0", tmp_path / "part1", "--merge", "-o", tmp_path / "merged")
    assert missing.code == 2 and "1 of 3 shard(s) not done: 2" in missing.stderr
    merged = clipseg("label", *(tmp_path / f"part{i}" for i in range(3)), "--merge", "-o", tmp_path / "merged",
                     "--preview", "2")
    assert merged.code == 0, merged.stderr
    assert dataset_files(tmp_path / "merged") == dataset_files(tmp_path / "one")
    # shards on one shared folder, merged in place
    for index in range(3):
        assert run_label(photos, tmp_path / "shared", *common, "--shard", f"{index}/3").code == 0
    assert clipseg("label", tmp_path / "shared", "--merge", "-o", tmp_path / "shared", "--preview", "2").code == 0
    assert dataset_files(tmp_path / "shared") == dataset_files(tmp_path / "one")


def test_a_bad_image_is_one_line_and_the_rest_are_labelled(tmp_path: Path, photos: Path, run_label) -> None:
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    done = run_label(photos, tmp_path / "ds", "-p", "tree")
    assert done.code == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken.jpg" in errors[0]
    assert "6 image(s) labelled, 0 up to date, 1 failed" in summary(done.stderr)
    found = json.loads((tmp_path / "ds" / "annotations" / "instances_train.json").read_text())
    assert len(found["images"]) == 6


@pytest.mark.parametrize(("args", "message"), [
    (["-p", "car", "-p", "Car=automobile"], "collides"),
    (["-p", "car", "--split", "0.8,0.1"], "sum to 0.9"),
    (["-p", "car", "--split", "0.8,x"], "fractions separated by commas"),
    (["-p", "car", "--format", "csv"], "choose one of coco, yolo, voc, labelstudio"),
    (["-p", "car", "--prompt-image", "x.png"], "No such option"),
])
def test_set_up_errors(tmp_path: Path, photos: Path, run_label, args: list[str], message: str) -> None:
    done = run_label(photos, tmp_path / "ds", *args)
    assert done.code == 2 and message in done.stderr
    assert not (tmp_path / "ds").exists()


def test_a_folder_holding_another_dataset_is_refused(tmp_path: Path, photos: Path, run_label) -> None:
    save(noise((10, 10)), tmp_path / "theirs" / "images" / "x.png")
    foreign = run_label(photos, tmp_path / "theirs", "-p", "car")
    assert foreign.code == 2 and "not a clipseg dataset" in foreign.stderr
    assert run_label(photos, tmp_path / "ours", "-p", "car").code == 0
    for args in (["-p", "car", "--format", "yolo"], ["-p", "tree"], ["-p", "car", "--semantic"]):
        other = run_label(photos, tmp_path / "ours", *args)
        assert other.code == 2 and "holds another dataset (coco of classes ['car']" in other.stderr


def test_two_folders_with_one_file_name_give_two_images(tmp_path: Path, photos: Path, run_label) -> None:
    save(noise((50, 40), seed=20), tmp_path / "new" / "a.png")
    done = run_label([photos, tmp_path / "new"], tmp_path / "ds", "-p", "tree")
    assert done.code == 0 and "7 image(s) labelled" in summary(done.stderr)
    names = sorted(p.name for p in (tmp_path / "ds" / "images" / "train").iterdir())
    assert names == ["a_png-2.png", "a_png.png", "b.jpg", "c.png", "same_jpg.jpg", "same_png.png", "sub__d.png"]
    again = run_label([photos, tmp_path / "new"], tmp_path / "ds", "-p", "tree")
    assert "0 image(s) labelled, 7 up to date" in summary(again.stderr)
    found = json.loads((tmp_path / "ds" / "annotations" / "instances_train.json").read_text())
    assert len(found["images"]) == 7


def test_an_image_no_longer_given_leaves_the_dataset(tmp_path: Path, photos: Path, run_label) -> None:
    assert run_label(photos, tmp_path / "ds", *CLASSES, "--format", "yolo", "--preview", "2").code == 0
    (photos / "c.png").unlink()
    (photos / "sub" / "d.png").unlink()
    rerun = run_label(photos, tmp_path / "ds", *CLASSES, "--format", "yolo")
    assert rerun.code == 0 and "0 image(s) labelled, 4 up to date" in summary(rerun.stderr)
    fresh = run_label(photos, tmp_path / "fresh", *CLASSES, "--format", "yolo")
    assert fresh.code == 0 and dataset_files(tmp_path / "ds") == dataset_files(tmp_path / "fresh")
    assert not (tmp_path / "ds" / "images" / "train" / "c.png").exists()  # YOLO would train on it as background
