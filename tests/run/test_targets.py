"""What a run writes per image, its names and its rerun rules, decided without a model (`clipseg_cli.run.targets`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from clipseg_cli.fingerprint import PNG_KEY
from clipseg_cli.imaging.writing import save_mask_png
from clipseg_cli.run.inputs import WorkItem
from clipseg_cli.run.outputs import OutputPlan
from clipseg_cli.run.targets import Targets

MODEL = {"weights": "w", "precision": "float32", "device": "cpu"}
SETTINGS = {"threshold": 0.4}


def photo(tmp_path: Path) -> WorkItem:
    Image.new("RGB", (8, 6), "red").save(tmp_path / "photo.png")
    return WorkItem(tmp_path / "photo.png", tmp_path / "out", "photo")


def write(result, kind: str = "mask") -> None:
    Path(getattr(result, kind)).parent.mkdir(parents=True, exist_ok=True)
    save_mask_png(np.zeros((6, 8), bool), Path(getattr(result, kind)), {PNG_KEY: result.records[kind]})


def test_text_prompts_are_named_by_their_text_and_a_repeat_runs_once():
    targets = Targets.build(["red car", "Red Car", "red car"])
    assert targets.targets[0].label == "red-car"
    assert targets.targets[1].label.startswith("red-car-") and len(targets) == 2
    assert targets.prompts == ("red car", "Red Car")


def test_negatives_and_unions_add_a_hash_so_no_two_requests_share_a_name():
    plain, negated = Targets.build(["car"]), Targets.build(["car"], negatives=["wheel", "wheel"])
    union = Targets.build(["car", "tree"], union=True)
    assert negated.negatives == ("wheel",)
    labels = {plain.targets[0].label, negated.targets[0].label, union.targets[0].label}
    assert len(labels) == 3 and len(union) == 1 and union.targets[0].prompt == "car | tree"


def test_names_given_twice_are_told_apart_by_their_prompts():
    targets = Targets.build(["car", "tree"], names=["same", "same"])
    assert len({t.label for t in targets.targets}) == 2


def test_outputs_are_pending_then_skipped_then_redone_when_a_setting_changes(tmp_path):
    item = photo(tmp_path)
    targets = Targets.build(["car"], plan=OutputPlan(overlay=False))
    [first] = targets.decide(item, MODEL, SETTINGS)
    assert first.status == "pending" and first.reason is None
    write(first)
    assert targets.decide(item, MODEL, SETTINGS)[0].status == "skipped"
    [changed] = targets.decide(item, MODEL, {"threshold": 0.5})
    assert changed.status == "pending" and "threshold" in changed.reason
    forced = Targets.build(["car"], plan=OutputPlan(overlay=False), force=True)
    assert forced.decide(item, MODEL, SETTINGS)[0].status == "pending"


def test_a_missing_output_kind_is_written_again(tmp_path):
    item = photo(tmp_path)
    [first] = Targets.build(["car"], plan=OutputPlan(overlay=False)).decide(item, MODEL, SETTINGS)
    write(first)
    [again] = Targets.build(["car"]).decide(item, MODEL, SETTINGS)  # the overlay is asked now
    assert again.status == "pending" and again.reason is None


def test_an_output_that_would_overwrite_an_input_fails_every_target(tmp_path):
    item = photo(tmp_path)
    clash = item.output_dir / "photo.car.mask.png"
    clash.parent.mkdir()
    clash.write_bytes(b"an input")
    targets = Targets.build(["car", "tree"], protected=[clash])
    results = targets.decide(item, MODEL, SETTINGS)
    assert [r.status for r in results] == ["failed", "failed"]
    assert "would overwrite an input" in results[0].error
    assert clash.read_bytes() == b"an input"
