"""clipseg train: a decoder learns a task the base cannot do; the result loads here and in transformers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from clipseg_cli.cli import main
from factory import build_checkpoint, shapes_task, write_manifest
from helpers import default_signals

SRC = Path(__file__).resolve().parents[2] / "src"
TRAIN_STEPS = ["--epochs", "50", "--batch-size", "8", "--lr", "1e-2"]


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny checkpoint, the coloured-shapes task split into train and val, and a shared cache folder."""
    root = tmp_path_factory.mktemp("task")
    checkpoint = build_checkpoint(root / "base", "fine")
    records = shapes_task(root / "data", 56)
    return {
        "base": checkpoint,
        "train": write_manifest(root / "data" / "train.jsonl", records[:96]),
        "val": write_manifest(root / "data" / "val.jsonl", records[96:]),
        "small": write_manifest(root / "data" / "small.jsonl", records[:16]),
        "cache": root / "cache",
        "root": root,
    }


def train_args(task: dict[str, Path], manifest: str | Path, out: Path, *extra: str) -> list[str]:
    data = task[manifest] if isinstance(manifest, str) else manifest
    return ["train", str(data), "--weights", str(task["base"]), "-o", str(out), "--precision", "fp32",
            "--device", "cpu", "--cache-dir", str(task["cache"]), "--threads", "1", "-q", *extra]


@pytest.fixture(scope="module")
def trained(task: dict[str, Path]) -> Path:
    out = task["root"] / "trained"
    assert main(train_args(task, "train", out, "--val", str(task["val"]), *TRAIN_STEPS)) == 0
    return out


@pytest.mark.slow
def test_training_lifts_val_miou_from_the_base_to_over_0_8(trained: Path, task: dict[str, Path]) -> None:
    log = json.loads((trained / "training.json").read_text())
    base, best = log["epochs"][0]["val"]["miou"], log["best_val_miou"]
    assert base < 0.3, "the base model must not be able to do the task already"
    assert best >= 0.8, [round(epoch["val"]["miou"], 3) for epoch in log["epochs"]]
    assert log["data"]["sha256"] == __import__("hashlib").sha256(task["train"].read_bytes()).hexdigest()
    assert log["data"]["manifest"] == str(task["train"]) and log["val"]["manifest"] == str(task["val"])
    assert log["options"]["lr"] == 1e-2 and log["base"]["weights"] == str(task["base"])
    assert log["epochs"][log["best_epoch"]]["val"]["miou"] == best and log["improved"] is True
    # the image tower ran once per (image, variant): validation images at epoch 0, training images
    # (2 variants each) in epoch 1, never again
    passes = [epoch["image_tower_passes"] for epoch in log["epochs"]]
    assert passes[0] == 8 and passes[1] == passes[-1] == 8 + 48 * 2
    assert load_file(trained / "model.safetensors") and (trained / "resume.pt").is_file()


@pytest.mark.slow
def test_eval_of_the_saved_model_reports_the_training_number(trained: Path, task: dict[str, Path], capsys) -> None:
    code = main(["eval", str(task["val"]), "--weights", str(trained), "--precision", "fp32", "--device", "cpu",
                 "--json", "-q"])
    summary = json.loads(capsys.readouterr().out)
    log = json.loads((trained / "training.json").read_text())
    assert code == 0
    assert summary["miou"] == pytest.approx(log["best_val_miou"], abs=2e-3)
    assert summary["records"] == log["val"]["records"]


@pytest.mark.slow
def test_the_saved_model_loads_in_transformers_with_our_logits(trained: Path, task: dict[str, Path]) -> None:
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    from clipseg_cli import load_model

    processor = CLIPSegProcessor.from_pretrained(trained)
    reference = CLIPSegForImageSegmentation.from_pretrained(trained).eval()
    image = Image.open(task["root"] / "data" / "img050.png").convert("RGB")
    prompts = ["red circle", "blue square", "green square"]
    inputs = processor(text=prompts, images=[image] * len(prompts), padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = reference(**inputs).logits
        ours = load_model(trained)(pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"],
                                   attention_mask=inputs["attention_mask"])
        base = CLIPSegForImageSegmentation.from_pretrained(task["base"]).eval()(**inputs).logits
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-5)
    assert (expected - base).abs().mean() > 0.5, "the exported decoder must be the trained one"


@pytest.mark.slow
def test_same_seed_same_weights(task: dict[str, Path], capsys) -> None:
    def weights(out: Path) -> dict[str, torch.Tensor]:
        return load_file(out / "model.safetensors")

    runs = task["root"] / "seeds"
    options = ["--epochs", "4", "--batch-size", "4", "--val-fraction", "0.25"]
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        assert main(train_args(task, "small", runs / name, *options, "--seed", seed)) == 0
    a, b, c = weights(runs / "a"), weights(runs / "b"), weights(runs / "c")
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert not all(torch.equal(a[key], c[key]) for key in a)
    # run b found every activation in the cache that run a filled
    assert json.loads((runs / "b" / "training.json").read_text())["epochs"][-1]["image_tower_passes"] == 0
    # a cache of size 0 stores nothing on disk, and gives the same weights
    assert main(train_args(task, "small", runs / "d", *options, "--cache-size", "0", "--cache-dir",
                           str(runs / "empty-cache"))) == 0
    assert not list((runs / "empty-cache").glob("*.npy"))
    assert all(torch.equal(a[key], weights(runs / "d")[key]) for key in a)
    # --resume with other options is refused, naming what differs
    assert main(train_args(task, "small", runs / "a", *options, "--lr", "0.5", "--resume")) == 2
    assert "other options (lr differ)" in capsys.readouterr().err


HELD_AFTER_EPOCH_2 = """
import sys
from clipseg_cli.cli import main

class Held:  # stderr that waits for stdin to close once the line of epoch 2 is out
    def __init__(self, stream):
        self.stream, self.line = stream, ""
    def write(self, text):
        self.stream.write(text)
        self.stream.flush()
        self.line += text
        if "\\n" in text:
            if self.line.startswith("epoch 2/"):
                sys.stdin.read()
            self.line = ""
        return len(text)
    def __getattr__(self, name):
        return getattr(self.stream, name)

sys.stderr = Held(sys.stderr)
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_resume_continues_to_the_same_weights(task: dict[str, Path]) -> None:
    runs = task["root"] / "resume"
    options = ["--epochs", "30", "--batch-size", "4", "--val-fraction", "0.25", "--seed", "3"]
    straight = runs / "straight"
    assert main(train_args(task, "small", straight, *options)) == 0
    interrupted = runs / "interrupted"
    logged = [arg for arg in train_args(task, "small", interrupted, *options) if arg != "-q"]  # one line an epoch
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    # the run waits after the line of epoch 2 until the signal has landed, however busy the machine
    process = subprocess.Popen([sys.executable, "-c", HELD_AFTER_EPOCH_2, *logged], env=env, stdin=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, preexec_fn=default_signals)
    for line in process.stderr:
        if line.startswith("epoch 2/"):
            break
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)  # closes stdin only after the signal was sent
    assert process.returncode == 130, stderr
    assert "continue with --resume" in stderr
    log = interrupted / "training.json"
    assert len(json.loads(log.read_text())["epochs"]) - 1 == 2  # epoch 0 is the base
    # what Ctrl-C left is a complete checkpoint: ours and transformers' loaders take it
    from transformers import CLIPSegForImageSegmentation

    from clipseg_cli import Segmenter

    Segmenter.from_pretrained(interrupted, device="cpu", precision="fp32")
    CLIPSegForImageSegmentation.from_pretrained(interrupted)
    assert main(train_args(task, "small", interrupted, *options, "--resume")) == 0
    a, b = load_file(straight / "model.safetensors"), load_file(interrupted / "model.safetensors")
    assert all(torch.equal(a[key], b[key]) for key in a)

    def history(out: Path) -> list:
        epochs = json.loads((out / "training.json").read_text())["epochs"]
        return [(e["epoch"], e["steps"], e["loss"], e["val"]) for e in epochs]

    assert history(interrupted) == history(straight)


def test_bad_records_stop_training_unless_skip_bad(task: dict[str, Path], tmp_path: Path, capsys) -> None:
    lines = task["small"].read_text().splitlines()[:6]
    broken = json.loads(lines[0]) | {"mask": "nowhere.mask.png"}
    manifest = task["small"].parent / "with-bad.jsonl"
    manifest.write_text("\n".join([*lines, json.dumps(broken)]) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    assert main(train_args(task, manifest, out, "--steps", "1")) == 2
    err = capsys.readouterr().err
    assert f"{manifest} line 7: " in err and "nowhere.mask.png: no such file" in err and "--skip-bad" in err
    assert not out.exists()
    assert main(train_args(task, manifest, out, "--steps", "1", "--skip-bad")) == 0
    log = json.loads((out / "training.json").read_text())
    assert log["data"]["skipped"] == 1 and log["data"]["records"] + log["val"]["records"] == 6


def test_mixed_precision_training_gives_a_checkpoint_that_loads(task: dict[str, Path], tmp_path: Path) -> None:
    args = train_args(task, "small", tmp_path / "bf16", "--steps", "3")
    args[args.index("fp32")] = "bf16"
    assert main(args) == 0
    log = json.loads((tmp_path / "bf16" / "training.json").read_text())
    assert log["base"]["precision"] == "bfloat16" and all(np.isfinite(e["loss"]) for e in log["epochs"][1:])
    assert load_file(tmp_path / "bf16" / "model.safetensors")["decoder.film_mul.weight"].dtype == torch.float32


def test_a_used_output_folder_is_refused(task: dict[str, Path], tmp_path: Path, capsys) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    assert main(train_args(task, "small", tmp_path, "--steps", "1")) == 2
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_targets_keep_the_object_under_augmentation() -> None:
    from clipseg_cli.training.augment import can_flip, make_variants, object_box

    mask = np.zeros((50, 80), bool)
    mask[10:20, 30:45] = True
    box = object_box([mask])
    assert box == (30, 10, 45, 20)
    rng = np.random.default_rng(0)
    for variant in make_variants((80, 50), box, True, 20, rng)[1:]:
        assert variant.mask(mask).sum() == mask.sum()  # the whole object survives every crop
    assert can_flip(["red car"]) and not can_flip(["the left cup"]) and not can_flip(["Rightmost tree"])


def test_a_run_that_does_not_beat_the_base_says_so(task: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "tuned"
    # lr 0: no epoch can beat the base model (equal is not better), so the folder keeps the base model
    code = main(train_args(task, "small", out, "--epochs", "2", "--batch-size", "8", "--lr", "0",
                           "--val-fraction", "0.25"))
    stderr = capsys.readouterr().err
    assert code == 0  # the run worked; training.json tells a script that it did not help
    log = json.loads((out / "training.json").read_text())
    assert log["improved"] is False and log["best_epoch"] == 0 and len(log["epochs"]) == 3
    assert "training did not help: no epoch beat the base model's validation mIoU" in stderr
    assert f"{out} holds the base model unchanged" in stderr and "trained checkpoint" not in stderr
    base = load_file(task["base"] / "model.safetensors")
    assert all(torch.equal(tensor, base[key]) for key, tensor in load_file(out / "model.safetensors").items())
