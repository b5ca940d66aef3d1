"""What a user changes between runs is noticed: weights replaced in place, odd characters in prompts and
manifests, damaged inputs; and what a run leaves behind is whole (issue 19)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from factory import build_checkpoint, shapes_task, write_manifest
from helpers import clipseg, noise, save

SIZE = (64, 48)


def replace_in_place(target: Path, source: Path) -> None:
    """Overwrite ``target``'s bytes with ``source``'s as ``cp -p`` does: same inode, size and mtime."""
    before = target.stat()
    shutil.copyfile(source, target)  # opens the existing file for writing: the inode stays
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = target.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    assert target.read_bytes() == source.read_bytes()


@pytest.fixture
def swappable(tmp_path: Path) -> tuple[Path, Path]:
    """Two checkpoints of one architecture (same file sizes), different weights: (used, replacement)."""
    used = build_checkpoint(tmp_path / "weights", "plain", seed=3)
    other = build_checkpoint(tmp_path / "other", "plain", seed=4)
    assert (used / "model.safetensors").stat().st_size == (other / "model.safetensors").stat().st_size
    return used, other


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "int8"])  # torch, and ONNX Runtime's cached graphs
def test_weights_replaced_in_place_with_the_same_size_and_mtime_are_noticed(
        swappable: tuple[Path, Path], tmp_path: Path, precision: str) -> None:
    used, other = swappable
    photo = save(noise(SIZE, seed=5), tmp_path / "in" / "photo.png")

    def run(weights: Path, out: str) -> dict:
        outcome = clipseg("segment", photo, "red car", "-o", tmp_path / out, "--weights", weights, "--json",
                          "--precision", precision, "--device", "cpu", "-q")
        assert outcome.code == 0, outcome.stderr
        [record] = outcome.records()
        return record

    run(used, "out")
    assert run(used, "out")["status"] == "skipped"
    replace_in_place(used / "model.safetensors", other / "model.safetensors")
    record = run(used, "out")
    assert (record["status"], record["reason"]) == ("ok", "weights changed")
    fresh = run(other, "fresh")  # the replacement's own masks (for int8: from graphs exported from its bytes)
    for kind in ("mask", "overlay"):
        assert Path(record[kind]).read_bytes() == Path(fresh[kind]).read_bytes()


def test_training_does_not_reuse_the_activations_of_weights_replaced_in_place(
        tmp_path: Path) -> None:
    used = build_checkpoint(tmp_path / "weights", "fine", seed=3)
    other = build_checkpoint(tmp_path / "other", "fine", seed=4)
    manifest = write_manifest(tmp_path / "data" / "train.jsonl", shapes_task(tmp_path / "data", 4))

    def passes(out: str) -> int:
        outcome = clipseg("train", manifest, "--weights", used, "-o", tmp_path / out, "--precision", "fp32",
                          "--device", "cpu", "--cache-dir", tmp_path / "cache", "--epochs", "1", "--threads", "1",
                          "--val-fraction", "0.5", "-q")
        assert outcome.code == 0, outcome.stderr
        return json.loads((tmp_path / out / "training.json").read_text())["epochs"][-1]["image_tower_passes"]

    first = passes("first")
    assert first > 0
    assert passes("again") == 0  # the same weights: every activation comes from the cache
    replace_in_place(used / "model.safetensors", other / "model.safetensors")
    assert passes("replaced") == first


# ---- item 8: lines end at \n, \r\n and \r only; JSON escapes the other line separators -------------------

ODD = "red\u2028car\u2029x\x85y\x0bz\x0cw"  # str.splitlines would cut this prompt in six


def test_a_prompt_with_unicode_line_separators_stays_one_prompt_and_its_record_one_line(
        checkpoint: Path, tmp_path: Path) -> None:
    photo = save(noise(SIZE, seed=5), tmp_path / "in" / "photo.png")
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(f"{ODD}\r\ntree\rsky\n".encode())
    outcome = clipseg("batch", photo, "--prompts-file", prompts, "-o", tmp_path / "out", "--weights", checkpoint,
                      "--precision", "fp32", "--json", "-q")
    assert outcome.code == 0, outcome.stderr
    lines = outcome.stdout.split("\n")[:-1]
    assert len(lines) == 3 and not any(c in outcome.stdout for c in "\u2028\u2029\x85")  # escaped
    assert [json.loads(line)["prompt"] for line in lines] == [ODD, "tree", "sky"]
    manifest = tmp_path / "run.jsonl"
    manifest.write_text(outcome.stdout.replace("\\u2028", "\u2028"), encoding="utf-8")  # as another tool may write it
    scored = clipseg("eval", manifest, "--weights", checkpoint, "--precision", "fp32", "--json", "-q")
    assert scored.code == 0, scored.stderr
    summary = json.loads(scored.stdout)
    assert (summary["records"], summary["skipped"]) == (3, 0) and summary["miou"] > 0.99  # its own masks


# ---- item 13: a NUL byte or a lone surrogate in a manifest is one line, never an internal error ----------


def small_task(tmp_path: Path) -> tuple[Path, list[dict]]:
    folder = tmp_path / "data"
    return folder, shapes_task(folder, 2)


def test_a_nul_byte_or_a_lone_surrogate_in_a_manifest_is_a_bad_record_named_in_one_line(
        checkpoint: Path, tmp_path: Path) -> None:
    folder, records = small_task(tmp_path)
    bad = [{**records[1], "image": "img\x00001.png"}, {**records[2], "prompt": "red\ud800"},
           {**records[3], "mask": "m\udfff.png"}]
    manifest = folder / "bad.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in [records[0], *bad]), encoding="utf-8")
    scored = clipseg("eval", manifest, "--weights", checkpoint, "--precision", "fp32", "--json", "--per-record", "-q")
    assert scored.code == 1, scored.stderr
    assert json.loads(scored.stdout.splitlines()[-1])["records"] == 1
    errors = scored.stderr.splitlines()
    assert [e for e in errors if "internal error" in e] == []
    assert any("line 2: 'image' holds a NUL byte" in e for e in errors), errors
    assert any("line 3: 'prompt' is not valid Unicode text" in e for e in errors), errors
    assert any("line 4: 'mask' is not valid Unicode text" in e for e in errors), errors
    trained = clipseg("train", manifest, "--weights", checkpoint, "-o", tmp_path / "out", "--precision", "fp32",
                      "--cache-dir", tmp_path / "cache", "--epochs", "1", "-q")
    assert trained.code == 2 and "internal error" not in trained.stderr
    assert trained.errors() == [f"error: {manifest}: 3 bad record(s), named above; fix them or pass --skip-bad"]


# ---- item 15: quieter and clearer ------------------------------------------------------------------------


def test_a_repeated_manifest_line_is_reported_and_counted_once(checkpoint: Path, tmp_path: Path) -> None:
    folder, records = small_task(tmp_path)
    manifest = write_manifest(folder / "twice.jsonl", [records[0], records[1], records[0]])
    scored = clipseg("eval", manifest, "--weights", checkpoint, "--precision", "fp32", "--json", "-q")
    summary = json.loads(scored.stdout)
    assert (scored.code, summary["records"], summary["skipped"]) == (1, 2, 1)
    assert f"{manifest} line 3: a repeat of {manifest} line 1 (counted once)" in scored.stderr


def test_a_nan_threshold_is_not_a_number(checkpoint: Path, tmp_path: Path) -> None:
    photo = save(noise(SIZE, seed=5), tmp_path / "photo.png")
    for command in (["segment", photo, "car"], ["batch", photo, "-p", "car"]):
        outcome = clipseg(*command, "-o", tmp_path / "out", "--weights", checkpoint, "-t", "nan")
        assert outcome.code == 2 and "nan is not a number" in outcome.stderr, outcome.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_an_empty_hf_home_is_treated_as_unset(tmp_path: Path) -> None:
    import subprocess
    import sys

    from helpers import subprocess_env

    env = subprocess_env(HF_HOME="", XDG_CACHE_HOME=str(tmp_path / "xdg"))
    env.pop("CLIPSEG_CACHE", None)
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    shown = subprocess.run([sys.executable, "-c", "from clipseg_cli.cachedir import cache_root; "
                            "print(cache_root())"], env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == str(tmp_path / "xdg" / "huggingface" / "clipseg")


# ---- item 11: train leaves no temporary file and writes its checkpoint folder whole ---------------------


def run_python(code: str, *args: object, limit_bytes: int | None = None):
    """Run Python code in a child process with our source (and optionally a file size limit)."""
    import subprocess
    import sys

    from helpers import subprocess_env

    def limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    env = {**subprocess_env(), "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env, capture_output=True, text=True,
                          preexec_fn=limit if limit_bytes else None, timeout=600)


def test_train_sweeps_the_targets_file_a_killed_run_left_in_the_cache(tmp_path: Path) -> None:
    base = build_checkpoint(tmp_path / "base", "fine")
    manifest = write_manifest(tmp_path / "data" / "train.jsonl", shapes_task(tmp_path / "data", 3))
    cache = tmp_path / "cache"
    cache.mkdir()
    left = run_python("import sys; from pathlib import Path; from clipseg_cli.imaging.writing import temp_folder; "
                      "(temp_folder(Path(sys.argv[1]) / 'targets') / 'targets.u8').write_bytes(bytes(4096))", cache)
    assert left.returncode == 0, left.stderr  # what a run killed while training leaves: its writer is gone
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".npy")]
    outcome = clipseg("train", manifest, "--weights", base, "-o", tmp_path / "out", "--precision", "fp32",
                      "--device", "cpu", "--cache-dir", cache, "--epochs", "1", "--threads", "1", "-q")
    assert outcome.code == 0, outcome.stderr
    assert [p.name for p in cache.iterdir() if p.suffix != ".npy" and p.name != ".lock"] == []  # .lock: in use


@pytest.mark.slow
@pytest.mark.skipif(os.name != "posix", reason="RLIMIT_FSIZE")
def test_a_full_disk_during_train_is_one_line_and_leaves_no_half_checkpoint(tmp_path: Path) -> None:
    base = build_checkpoint(tmp_path / "base", "fine")
    manifest = write_manifest(tmp_path / "data" / "train.jsonl", shapes_task(tmp_path / "data", 3))
    assert (base / "model.safetensors").stat().st_size > 300_000  # the limit stops the weights, not the cache
    out = tmp_path / "out"
    done = run_python("import sys; from clipseg_cli.cli import main; sys.exit(main(sys.argv[1:]))",
                      "train", manifest, "--weights", base, "-o", out, "--precision", "fp32", "--device", "cpu",
                      "--cache-dir", tmp_path / "cache", "--epochs", "1", "--threads", "1", "-q",
                      limit_bytes=300_000)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [f"error: --output-dir {out}: cannot write the checkpoint (File too large); "
                                        "the folder holds the last complete epoch, if any (free some space, then "
                                        "--resume or start again)"]
    assert not out.exists()  # no folder with config and tokenizer but no weights, no temporary folder
    assert sorted(os.listdir(tmp_path)) == ["base", "cache", "data"]


# ---- item 14: a mask's header is checked before its pixels; variants are computed in bounded groups ------


@pytest.mark.slow
def test_a_masks_size_is_checked_against_the_image_before_it_is_decoded(checkpoint: Path, tmp_path: Path) -> None:
    from PIL import Image

    folder, records = small_task(tmp_path)
    huge = folder / "huge.mask.png"
    Image.new("1", (12000, 12000)).save(huge)
    huge.write_bytes(huge.read_bytes()[:200])  # a valid header, then nothing: decoding it would fail
    manifest = write_manifest(folder / "m.jsonl", [records[0], {**records[1], "mask": "huge.mask.png"}])
    for command in (["eval", manifest], ["train", manifest, "-o", tmp_path / "out", "--cache-dir", tmp_path / "c"]):
        outcome = clipseg(*command, "--weights", checkpoint, "--precision", "fp32", "-q")
        assert outcome.code in (1, 2)
        assert f"line 2: {huge}: mask is 12000x12000, the image is 64x64" in outcome.stderr, outcome.stderr


def test_train_computes_the_variants_of_an_image_in_bounded_groups(tmp_path: Path) -> None:
    from clipseg_cli.training.features import VARIANT_GROUP

    base = build_checkpoint(tmp_path / "base", "fine")
    manifest = write_manifest(tmp_path / "data" / "train.jsonl", shapes_task(tmp_path / "data", 1))
    outcome = clipseg("train", manifest, "--weights", base, "-o", tmp_path / "out", "--precision", "fp32",
                      "--device", "cpu", "--cache-dir", tmp_path / "cache", "--variants", "64", "--steps", "1",
                      "--batch-size", "1", "--val-fraction", "0", "--threads", "1", "-q")
    assert outcome.code == 0, outcome.stderr
    log = json.loads((tmp_path / "out" / "training.json").read_text())
    assert log["epochs"][-1]["image_tower_passes"] == VARIANT_GROUP < 64  # one step needs one group, not all 64


def test_eval_per_record_lists_every_line_in_manifest_order(checkpoint: Path, tmp_path: Path) -> None:
    folder, records = small_task(tmp_path)
    manifest = folder / "m.jsonl"
    lines = [json.dumps(records[0]), "{not json", json.dumps(records[2]), json.dumps(records[1]),
             json.dumps({**records[3], "image": "gone.png"}), json.dumps(records[0])]
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for args in (["--json"], []):
        scored = clipseg("eval", manifest, "--weights", checkpoint, "--precision", "fp32", "--per-record", "-q", *args)
        assert scored.code == 1, scored.stderr
        shown = scored.stdout.splitlines()
        if args:
            listed = [json.loads(line) for line in shown[:-1]]
            assert [(r["line"], r["status"]) for r in listed] == [
                (1, "ok"), (2, "skipped"), (3, "ok"), (4, "ok"), (5, "skipped"), (6, "skipped")]
            assert "repeat of" in listed[5]["error"] and "gone.png" in listed[4]["error"]
        else:
            assert [line.startswith("skipped") for line in shown[:6]] == [False, True, False, False, True, True]
            assert "line 2: not valid JSON" in shown[1] and "gone.png" in shown[4] and "repeat" in shown[5]


@pytest.mark.slow
def test_matting_a_one_pixel_high_image_warns_nothing(tmp_path: Path) -> None:
    pytest.importorskip("pymatting")
    code = """
import numpy as np
from PIL import Image
from clipseg_cli import refine_map
rng = np.random.default_rng(0)
for shape in ((1, 60), (60, 1), (2, 60)):
    image = Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8))
    prob = np.linspace(0, 1, shape[0] * shape[1], dtype=np.float32).reshape(shape)  # object, rim, background
    alpha = refine_map(image, prob, "matting")
    assert alpha.shape == shape and np.isfinite(alpha).all()
"""
    done = run_python("import warnings; warnings.simplefilter('default')\n" + code)
    assert (done.returncode, done.stderr) == (0, "")
