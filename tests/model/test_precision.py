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
from clipseg_cli.backends import prepare_for_cpu
from clipseg_cli.backends.graph_cache import entry_dir, graph_path, program_path
from clipseg_cli.backends.ort import prepare_graphs
from clipseg_cli.fingerprint import PNG_KEY, read_record
from clipseg_cli.runtime import choose_runtime
from factory import probe_image
from helpers import clipseg, make_folder, subprocess_env

EMULATED_AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}  # as benchmarks/bench.py --emulate-avx2
PREPARING = "preparing the model for this CPU, once (about "


# /proc/cpuinfo flags of the CPU kinds that pick different precisions (as `runtime._cpu_flags` reads them).
CPU_FLAGS = {
    "amx": {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"},
    "avx512_bf16": {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"},  # this EPYC: no AMX
    "avx512": {"avx2", "fma", "avx512f", "avx512_vnni"},
    "avx2": {"avx2", "fma"},
}
FAST_ON_CPU = {"amx": ("torch", "bf16"), "avx512_bf16": ("onnxruntime", "int8"), "avx512": ("onnxruntime", "int8"),
               "avx2": ("onnxruntime", "int8")}


@pytest.fixture
def cpu_kind(monkeypatch):
    """Set the CPU kind runtime sees by its /proc/cpuinfo flags: ``cpu_kind("amx")``, ``cpu_kind("avx512_bf16")``,
    ``cpu_kind("avx512")`` or ``cpu_kind("avx2")``, without the emulation settings."""
    for name in EMULATED_AVX2:
        monkeypatch.delenv(name, raising=False)

    def set_kind(kind: str) -> None:
        monkeypatch.setattr(runtime, "_cpu_flags", lambda: frozenset(CPU_FLAGS[kind]))
    return set_kind


@pytest.mark.parametrize("kind", list(CPU_FLAGS))
@pytest.mark.parametrize("gpu", ["none", "cuda", "mps"])
def test_auto_is_exact_and_fast_is_the_hardware_s_fast_precision(cpu_kind, monkeypatch, gpu, kind):
    cpu_kind(kind)
    monkeypatch.setattr(runtime, "may_have_gpu", lambda: gpu != "none")
    monkeypatch.setattr(runtime, "resolve_device", lambda device: torch.device("cpu" if gpu == "none" else gpu))
    auto = choose_runtime("auto", "auto")
    assert auto.precision == "fp32" and auto.device == ("cpu" if gpu == "none" else gpu)
    assert auto.backend == ("onnxruntime" if gpu == "none" else "torch")
    assert choose_runtime("cpu", "auto").precision == "fp32"  # a GPU machine asked for its CPU
    fast = choose_runtime("auto", "fast")
    assert (fast.backend, fast.precision) == (FAST_ON_CPU[kind] if gpu == "none" else ("torch", "fp16"))
    assert choose_runtime("cpu", "fast") == runtime.Runtime(FAST_ON_CPU[kind][0], "cpu", FAST_ON_CPU[kind][1])
    assert choose_runtime("cpu", "auto", "torch") == runtime.Runtime("torch", "cpu", "fp32")
    assert choose_runtime("cpu", "fast", "torch") == runtime.Runtime("torch", "cpu", "bf16")  # int8 needs ORT
    assert choose_runtime("cpu", "fast", "onnxruntime") == runtime.Runtime("onnxruntime", "cpu", "int8")


def test_fast_is_int8_on_an_amx_cpu_kept_off_avx512(cpu_kind, monkeypatch):
    cpu_kind("amx")
    assert runtime.fast_cpu_precision() == "bf16"
    for name, value in EMULATED_AVX2.items():  # how an AVX2-only CPU is emulated: torch never reaches AMX
        monkeypatch.setenv(name, value)
        assert choose_runtime("cpu", "fast") == runtime.Runtime("onnxruntime", "cpu", "int8")
        monkeypatch.delenv(name)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["avx512_bf16", "amx"])
def test_segment_auto_runs_exact_and_fast_the_cpu_s_fast_precision(cpu_kind, checkpoint, tmp_path, kind):
    cpu_kind(kind)
    photo = tmp_path / "photo.png"
    probe_image(0).save(photo)
    done = clipseg("segment", photo, "tree", "--weights", checkpoint, "--no-overlay", "-v", "--json")
    assert done.code == 0, done.stderr
    assert "precision fp32 (auto asked) on onnxruntime" in done.stderr
    assert read_record(Path(done.records()[0]["mask"]))["precision"] == "exact"
    fast = clipseg("segment", photo, "tree", "--weights", checkpoint, "--no-overlay", "-v", "--precision", "fast",
                   "-o", tmp_path / "fast")
    backend, precision = FAST_ON_CPU[kind]
    assert fast.code == 0 and f"precision {precision} (fast asked) on {backend}" in fast.stderr


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


@pytest.mark.slow
def test_exact_masks_of_an_avx2_and_a_bf16_cpu_agree_and_each_accepts_the_other_s(cpu_kind, checkpoint, tmp_path):
    cpu_kind("avx512_bf16")  # the native runs: a CPU with bf16 units (auto meant bf16 on torch there)
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
    cpu_kind("avx512_bf16")
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


@pytest.mark.parametrize("kind", ["avx512_bf16", "amx"])
def test_outputs_of_the_old_fast_are_redone_once_where_fast_is_now_int8(cpu_kind, checkpoint, tmp_path, kind):
    cpu_kind(kind)
    photo = tmp_path / "photo.png"
    probe_image(0).save(photo)
    args = ("segment", photo, "tree", "--weights", checkpoint, "--no-overlay", "--json", "--precision")
    old = clipseg(*args, "bf16").records()[0]  # what fast wrote on every CPU with bf16 units before
    assert read_record(Path(old["mask"]))["precision"] == "bf16"
    again = clipseg(*args, "fast")
    record = again.records()[0]
    if kind == "amx":  # fast is still bf16 there
        assert (record["status"], record["reason"]) == ("skipped", None)
        return
    assert record["status"] == "ok" and "bf16 -> int8: --precision fast is now int8 on CPUs without AMX" in (
        record["reason"])
    assert "--precision fast is now int8" in again.stderr  # the summary's first redone output says why
    assert read_record(Path(record["mask"]))["precision"] == "int8"
    assert clipseg(*args, "fast").records()[0]["status"] == "skipped"  # once


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["avx512_bf16", "avx2", "amx"])
def test_prepare_for_cpu_makes_what_auto_and_fast_run(cpu_kind, checkpoint, own_cache, tmp_path, kind):
    cpu_kind(kind)
    fast = FAST_ON_CPU[kind][1]
    assert prepare_for_cpu(checkpoint, progress=False) == ["fp32", fast]
    entry = entry_dir(checkpoint)
    assert graph_path(entry, "segment", "fp32").is_file() and graph_path(entry, "text", "fp32").is_file()
    assert graph_path(entry, "segment", "int8").is_file() == (fast == "int8")
    assert program_path(entry, "segment").is_file() == (fast == "bf16")  # traced only where fast means bf16
    assert program_path(entry, "text").is_file() == (fast == "bf16")
    assert prepare_for_cpu(checkpoint, progress=False) == []  # all in the cache now
    photo = tmp_path / "photo.png"
    probe_image(0).save(photo)
    for precision in ("auto", "fast"):  # a first run then prepares nothing
        done = clipseg("segment", photo, "tree", "--weights", checkpoint, "--no-overlay", "--precision", precision,
                       "-o", tmp_path / precision)
        assert done.code == 0 and "clipseg: preparing" not in done.stderr, done.stderr


@pytest.mark.slow
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


@pytest.mark.slow
def test_download_weights_prepare_exports_ahead(hub_server, checkpoint, tmp_path, monkeypatch):
    served = {p.name: p.read_bytes() for p in checkpoint.iterdir()}
    hub_server.add_revision("CIDAS/clipseg-rd64-refined", "main", served)
    cache = tmp_path / "graphs"
    env = subprocess_env(HF_ENDPOINT=hub_server.url, HF_HUB_CACHE=str(tmp_path / "hub"), CLIPSEG_CACHE=str(cache))
    env.pop("HF_HUB_OFFLINE")
    command = [sys.executable, "-m", "clipseg_cli", "download-weights", "--prepare"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count(PREPARING) == 1  # the exact class, then the fast class's int8 graph or bf16 programs
    fast = runtime.fast_cpu_precision()
    assert [line for line in done.stderr.splitlines() if "clipseg: preparing" in line] == [
        next(line for line in done.stderr.splitlines() if PREPARING in line),
        next(line for line in done.stderr.splitlines() if f"preparing the {fast} model for this CPU" in line)]
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and PREPARING not in again.stderr and again.stdout == done.stdout
    monkeypatch.setenv("CLIPSEG_CACHE", str(cache))
    photo = tmp_path / "photo.png"
    probe_image(0).save(photo)
    first = clipseg("segment", photo, "tree", "--weights", done.stdout.strip(), "--no-overlay")
    assert first.code == 0 and PREPARING not in first.stderr and (tmp_path / "photo.tree.mask.png").is_file()
