"""--precision auto is the exact class on every machine; fast picks the hardware's fast precision; outputs of
the exact class made on one CPU kind (or runtime) are accepted on another; the one-time export is announced,
resumable and can be done ahead by download-weights --prepare."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

import clipseg_cli.runtime as runtime
from clipseg_cli.backends.cache import entry_dir, graph_path
from clipseg_cli.backends.ort import prepare_graphs
from clipseg_cli.fingerprint import PNG_KEY, read_record
from clipseg_cli.runtime import choose_runtime
from factory import probe_image
from helpers import clipseg, make_folder, subprocess_env

EMULATED_AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}  # as benchmarks/bench.py --emulate-avx2
PREPARING = "preparing the model for this CPU, once (about "


@pytest.fixture
def cpu_kind(monkeypatch):
    """Set the CPU kind runtime sees: ``cpu_kind(True)`` has bf16 units, ``cpu_kind(False)`` is AVX2-only."""
    for name in EMULATED_AVX2:
        monkeypatch.delenv(name, raising=False)

    def set_kind(bf16: bool) -> None:
        monkeypatch.setattr(runtime, "cpu_has_bf16_matmul", lambda: bf16)
    return set_kind


@pytest.mark.parametrize("bf16_units", [True, False], ids=["bf16-cpu", "avx2-cpu"])
@pytest.mark.parametrize("gpu", ["none", "cuda", "mps"])
def test_auto_is_exact_and_fast_is_the_hardware_s_fast_precision(cpu_kind, monkeypatch, gpu, bf16_units):
    cpu_kind(bf16_units)
    monkeypatch.setattr(runtime, "may_have_gpu", lambda: gpu != "none")
    monkeypatch.setattr(runtime, "resolve_device", lambda device: torch.device("cpu" if gpu == "none" else gpu))
    auto = choose_runtime("auto", "auto")
    assert auto.precision == "fp32" and auto.device == ("cpu" if gpu == "none" else gpu)
    assert auto.backend == ("onnxruntime" if gpu == "none" else "torch")
    assert choose_runtime("cpu", "auto").precision == "fp32"  # a GPU machine asked for its CPU
    fast = choose_runtime("auto", "fast")
    expected = ("torch", "bf16") if bf16_units else ("onnxruntime", "int8")
    assert (fast.backend, fast.precision) == (expected if gpu == "none" else ("torch", "fp16"))
    assert choose_runtime("cpu", "auto", "torch") == runtime.Runtime("torch", "cpu", "fp32")
    assert choose_runtime("cpu", "fast", "onnxruntime").precision == "int8"


def test_segment_auto_runs_exact_on_a_bf16_cpu(cpu_kind, checkpoint, tmp_path):
    cpu_kind(True)
    photo = tmp_path / "photo.png"
    probe_image(0).save(photo)
    done = clipseg("segment", photo, "tree", "--weights", checkpoint, "--no-overlay", "-v", "--json")
    assert done.code == 0, done.stderr
    assert "precision fp32 (auto asked) on onnxruntime" in done.stderr
    assert read_record(Path(done.records()[0]["mask"]))["precision"] == "exact"
    fast = clipseg("segment", photo, "tree", "--weights", checkpoint, "--no-overlay", "-v", "--precision", "fast",
                   "-o", tmp_path / "fast")
    assert fast.code == 0 and "precision bf16 (fast asked) on torch" in fast.stderr


def masks(folder: Path) -> dict[str, np.ndarray]:
    return {path.relative_to(folder).as_posix(): np.asarray(Image.open(path)) > 127
            for path in sorted(folder.rglob("*.mask.png"))}


def emulated_avx2_batch(folder: Path, out: Path, checkpoint: Path, *args: str) -> list[dict]:
    """`clipseg batch` in a process whose torch and oneDNN stay off AVX-512 (an AVX2-only CPU as bench.py emulates it).

    ONNX Runtime has no such switch: its kernels still use this CPU's best instructions.
    """
    command = [sys.executable, "-m", "clipseg_cli", "batch", str(folder), "-r", "-p", "car", "-p", "tree", "-o",
               str(out), "--weights", str(checkpoint), "--no-overlay", "--json", *args]
    done = subprocess.run(command, env=subprocess_env(**EMULATED_AVX2), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr  # the one broken image of make_folder
    return [json.loads(line) for line in done.stdout.splitlines()]


def native_batch(folder: Path, out: Path, checkpoint: Path, *args: str) -> list[dict]:
    done = clipseg("batch", folder, "-r", "-p", "car", "-p", "tree", "-o", out, "--weights", checkpoint,
                   "--no-overlay", "--json", *args)
    assert done.code == 1, done.stderr
    return done.records()


def test_exact_masks_of_an_avx2_and_a_bf16_cpu_agree_and_each_accepts_the_other_s(cpu_kind, checkpoint, tmp_path):
    cpu_kind(True)  # the native runs: a CPU with bf16 units (auto meant bf16 on torch there)
    folder = make_folder(tmp_path)
    avx2, native = tmp_path / "avx2", tmp_path / "native"
    first = emulated_avx2_batch(folder, avx2, checkpoint)  # auto: ONNX Runtime fp32
    assert sum(r["status"] == "ok" for r in first) == 14
    assert sum(r["status"] == "ok" for r in native_batch(folder, native, checkpoint, "--precision", "fp32")) == 14
    ours, theirs = masks(avx2), masks(native)  # ONNX Runtime and torch, two CPU kinds
    assert ours.keys() == theirs.keys() and len(ours) == 14
    equal = sum(np.count_nonzero(ours[name] == theirs[name]) for name in ours)
    assert equal / sum(mask.size for mask in ours.values()) >= 0.9999
    assert 0.05 < np.mean([mask.mean() for mask in ours.values()]) < 0.95  # masks with something to agree on

    rerun = native_batch(folder, avx2, checkpoint)  # auto on the bf16 CPU, on the AVX2 CPU's folder
    assert {r["status"] for r in rerun} == {"skipped", "failed"}
    rerun = emulated_avx2_batch(folder, native, checkpoint)  # auto on the AVX2 CPU, on torch fp32's folder
    assert {r["status"] for r in rerun} == {"skipped", "failed"}


def rewrite_precision(path: Path, precision: str) -> None:
    """Make an output's record name ``precision`` as a record of an older release did (digest included)."""
    import hashlib

    record = read_record(path)
    record.pop("digest")
    record["precision"] = precision
    record["digest"] = hashlib.sha256(json.dumps(record, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    info = PngImagePlugin.PngInfo()
    info.add_itxt(PNG_KEY, json.dumps(record))
    with Image.open(path) as image:
        image.load()
        image.save(path, pnginfo=info)


@pytest.mark.parametrize(("old", "redone"), [("bfloat16", True), ("float32-onnxruntime", False), ("float32", False)])
def test_outputs_of_an_older_release_are_redone_only_where_auto_was_bf16(cpu_kind, checkpoint, tmp_path, old, redone):
    cpu_kind(True)
    photo = tmp_path / "photo.png"
    probe_image(0).save(photo)
    args = ("segment", photo, "tree", "--weights", checkpoint, "--no-overlay", "--json")
    mask = Path(clipseg(*args).records()[0]["mask"])
    rewrite_precision(mask, old)
    assert read_record(mask)["precision"] == old
    again = clipseg(*args)
    record = again.records()[0]
    if redone:
        assert record["status"] == "ok" and "bf16 -> exact: --precision auto is now exact" in record["reason"]
        assert "auto is now exact on every CPU" in again.stderr  # the summary's first redone output says why
        assert clipseg(*args).records()[0]["status"] == "skipped"  # once
    else:
        assert (record["status"], record["reason"]) == ("skipped", None)


def test_first_run_announces_the_export_and_a_killed_one_resumes(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPSEG_CACHE", str(tmp_path / "cache"))
    photo = tmp_path / "photo.png"
    probe_image(0).save(photo)
    first = clipseg("segment", photo, "tree", "--weights", checkpoint, "--no-overlay")
    assert first.code == 0 and [line for line in first.stderr.splitlines() if PREPARING in line] == [
        next(line for line in first.stderr.splitlines() if PREPARING in line)]
    assert PREPARING not in clipseg("segment", photo, "tree", "--weights", checkpoint, "--no-overlay", "-f").stderr
    entry = entry_dir(checkpoint)
    segment = graph_path(entry, "segment", "fp32")
    stamp = segment.stat().st_mtime_ns
    graph_path(entry, "text", "fp32").unlink()  # as an export killed after its first graph leaves it
    assert prepare_graphs(checkpoint, progress=False)
    assert segment.stat().st_mtime_ns == stamp and graph_path(entry, "text", "fp32").is_file()
    assert not prepare_graphs(checkpoint, progress=False)


def test_download_weights_prepare_exports_ahead(hub_server, checkpoint, tmp_path, monkeypatch):
    served = {p.name: p.read_bytes() for p in checkpoint.iterdir()}
    hub_server.add_revision("CIDAS/clipseg-rd64-refined", "main", served)
    cache = tmp_path / "graphs"
    env = subprocess_env(HF_ENDPOINT=hub_server.url, HF_HUB_CACHE=str(tmp_path / "hub"), CLIPSEG_CACHE=str(cache))
    env.pop("HF_HUB_OFFLINE")
    command = [sys.executable, "-m", "clipseg_cli", "download-weights", "--prepare"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count(PREPARING) == 1
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and PREPARING not in again.stderr and again.stdout == done.stdout
    monkeypatch.setenv("CLIPSEG_CACHE", str(cache))
    photo = tmp_path / "photo.png"
    probe_image(0).save(photo)
    first = clipseg("segment", photo, "tree", "--weights", done.stdout.strip(), "--no-overlay")
    assert first.code == 0 and PREPARING not in first.stderr and (tmp_path / "photo.tree.mask.png").is_file()
