"""clipseg eval: the paper's metrics, computed as its code computes them, through the real entry point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipseg_cli.cli import main
from clipseg_cli.training.metrics import THRESHOLDS, Scores, average_precision, simpson, threshold_counts


def fixed_interval_counts(prob: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """FixedIntervalMetrics.add of github.com/timojl/clipseg (metrics.py), transcribed line by line."""
    p, g = torch.from_numpy(prob).flatten(), torch.from_numpy(truth.astype(np.float32)).flatten()
    p_sorted = p.sort()
    p, g = p_sorted.values, g[p_sorted.indices]
    tps, fps, fns, tns = [], [], [], []
    for thresh in np.linspace(0, 1, 51)[1:-1]:
        valid = torch.where(p > thresh)[0]
        n = int(valid[0]) if len(valid) > 0 else len(g)
        fn, tp = int(g[:n].sum()), int(g[n:].sum())
        fns += [fn]
        tns += [n - fn]
        tps += [tp]
        fps += [len(g) - n - tp]
    return np.array([tps, fps, fns, tns])


def test_counts_equal_fixed_interval_metrics_including_values_on_the_thresholds() -> None:
    rng = np.random.default_rng(0)
    prob = rng.random((23, 51)).astype(np.float32)
    prob[0, :49] = THRESHOLDS  # exactly on a threshold: not above it
    prob[1, :5] = [0.0, 1.0, 0.5, 0.98, 0.02]
    truth = rng.random((23, 51)) > 0.5
    assert len(THRESHOLDS) == 49 and THRESHOLDS[0] == np.float32(0.02) and THRESHOLDS[-1] == np.float32(0.98)
    np.testing.assert_array_equal(threshold_counts(prob, truth), fixed_interval_counts(prob, truth))


def test_simpson_is_scipys_simps_with_even_avg() -> None:
    integrate = pytest.importorskip("scipy.integrate")
    rng = np.random.default_rng(1)
    for n in (2, 3, 4, 5, 8, 11):
        x, y = np.sort(rng.random(n)), rng.random(n)
        if n % 2:
            expected = integrate.simpson(y, x=x)
        else:  # scipy < 1.11's default for an even count: the mean of Simpson + one trapezoid, both ways
            first = (integrate.simpson(y[:-1], x=x[:-1]) if n > 2 else 0.0) + 0.5 * (x[-1] - x[-2]) * (y[-1] + y[-2])
            last = (integrate.simpson(y[1:], x=x[1:]) if n > 2 else 0.0) + 0.5 * (x[1] - x[0]) * (y[1] + y[0])
            expected = (first + last) / 2
        assert simpson(y, x) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_summary_by_hand() -> None:
    scores = Scores(threshold=0.5)
    truth = np.zeros((4, 4), bool)
    truth[:2] = True  # 8 object pixels
    prob = np.where(truth, 0.9, 0.1).astype(np.float32)
    prob[0, 0] = 0.3  # one object pixel missed at 0.5
    iou = scores.add("car", prob, prob >= 0.5, truth)
    assert iou == pytest.approx(7 / (1 + 7 + 0 + 1))
    empty = np.zeros((4, 4), bool)
    scores.add("tree", np.full((4, 4), 0.05, np.float32), empty, empty)  # a negative record, all right
    summary = scores.summary()
    # the paper's + 1: a prompt with no object pixels scores 0 whatever the prediction
    assert summary["miou"] == pytest.approx((7 / 9 + 0) / 2)
    assert summary["iou_fg"] == pytest.approx(7 / 9)
    assert summary["iou_binary"] == pytest.approx(0.5 * 7 / 9 + 0.5 * 24 / (1 + 24 + 1))
    assert summary["best_threshold"] == 0.1  # the first where the missed pixel is found and no background is
    assert summary["best_miou"] == pytest.approx((8 / 9) / 2)
    assert summary["records"] == 2 and summary["prompts"] == 2
    assert average_precision(np.zeros((4, 49))) is None


# ---- through the CLI, on a trained-free tiny checkpoint -----------------------------------------

def _write_records(folder: Path) -> Path:
    """Two images, three records; one of them a negative (all-black mask)."""
    rng = np.random.default_rng(3)
    lines = []
    for name, size in (("a.png", (40, 30)), ("b.png", (24, 36))):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / name)
        mask = np.zeros((size[1], size[0]), np.uint8)
        mask[size[1] // 4 : size[1] // 2, : size[0] // 2] = 255
        Image.fromarray(mask).save(folder / f"{name}.mask.png")
        lines.append({"image": name, "prompt": "red car", "mask": f"{name}.mask.png"})
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(folder / "a.tree.mask.png")
    lines.append({"image": "a.png", "prompt": "tree", "mask": "a.tree.mask.png"})
    manifest = folder / "m.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return manifest


@pytest.mark.slow
@pytest.mark.parametrize("refine", ["none", "guided"])
def test_eval_json_equals_the_metrics_of_segmenter_predict(checkpoint: Path, tmp_path: Path, capsys,
                                                          refine: str) -> None:
    from clipseg_cli import Segmenter
    from clipseg_cli.refine import refine_map
    from clipseg_cli.training.manifest import read_manifest, read_mask

    manifest = _write_records(tmp_path)
    code = main(["eval", str(manifest), "--weights", str(checkpoint), "--precision", "fp32", "--device", "cpu",
                 "--json", "--per-record", "-q", "--threshold", "0.45", "--refine", refine])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0
    *records, summary = lines
    assert [r["status"] for r in records] == ["ok"] * 3
    assert summary["records"] == 3 and summary["skipped"] == 0 and summary["threshold"] == 0.45
    assert {"miou", "iou_fg", "iou_binary", "ap", "best_threshold", "best_miou"} <= summary.keys()
    # the same numbers from the public Segmenter's maps, thresholded as batch does (p >= t)
    segmenter = Segmenter.from_pretrained(checkpoint, device="cpu", precision="fp32")
    scores = Scores(0.45)
    for record in read_manifest(manifest).records:
        prob = segmenter.predict(record.image, [record.prompt])[0]
        if refine != "none":  # the public refinement, as batch applies it before the threshold
            prob = refine_map(Image.open(record.image).convert("RGB"), prob, refine, threshold=0.45)
        scores.add(record.prompt, prob, prob >= 0.45, read_mask(record.mask))
    expected = scores.summary()
    for key in ("miou", "iou_fg", "iou_binary", "ap", "best_threshold", "best_miou"):
        assert summary[key] == pytest.approx(expected[key], abs=1e-9), key
    assert 0 < summary["iou_fg"] < 1


def test_eval_skips_and_counts_bad_records_naming_each(checkpoint: Path, tmp_path: Path, capsys) -> None:
    manifest = _write_records(tmp_path)
    with manifest.open("a", encoding="utf-8") as stream:
        stream.write(json.dumps({"image": "gone.png", "prompt": "car", "mask": "a.png.mask.png"}) + "\n")
        stream.write(json.dumps({"image": "b.png", "prompt": "car", "mask": "a.png.mask.png"}) + "\n")
    code = main(["eval", str(manifest), "--weights", str(checkpoint), "--precision", "fp32", "--json", "-q"])
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert code == 1 and summary["records"] == 3 and summary["skipped"] == 2
    errors = captured.err.splitlines()
    assert any("line 4" in e and "gone.png: no such file" in e for e in errors), errors
    assert any("line 5" in e and "a.png.mask.png: mask is 40x30, the image is 24x36" in e for e in errors), errors


def test_eval_table_for_people(checkpoint: Path, tmp_path: Path, capsys) -> None:
    manifest = _write_records(tmp_path)
    assert main(["eval", str(manifest), "--weights", str(checkpoint), "--precision", "fp32", "-q"]) == 0
    out = capsys.readouterr().out
    for name in ("mIoU", "IoU (foreground)", "IoU (binary)", "AP", "best threshold"):
        assert name in out


def test_one_image_tower_pass_per_image_for_all_its_prompts(checkpoint: Path, tmp_path: Path) -> None:
    from clipseg_cli.postprocess import PostProcess
    from clipseg_cli.training.api import evaluate

    manifest = _write_records(tmp_path)  # a.png with two prompts, b.png with one
    evaluation = evaluate(manifest, weights=checkpoint, device="cpu", precision="fp32", post=PostProcess())
    model = evaluation.segmenter.model
    calls = []
    encode = model.encode_image
    model.encode_image = lambda pixels: calls.append(pixels.shape[0]) or encode(pixels)  # counts, then runs
    outcomes = list(evaluation.outcomes())
    assert [o.record.image.name for o in outcomes] == ["a.png", "a.png", "b.png"]  # grouped by image
    assert calls == [1, 1]
