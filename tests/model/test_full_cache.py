"""A cache on a full disk (issue 30 item 5): ONNX Runtime's and onnx's own write errors are caught where OSError is.

The disk is real: a 300 KB tmpfs (root may mount one), or where mounting is not permitted, a subprocess whose
files may not grow past 300 KB (RLIMIT_FSIZE), so every write of a graph fails as on a full disk.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import clipseg_cli.runtime as runtime
from factory import build_checkpoint
from helpers import clipseg, subprocess_env

SMALL = 300 * 1024


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("ckpt"), "plain")


@pytest.fixture
def full_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A 300 KB tmpfs as the cache root (a graph of the tiny model does not fit), unmounted afterwards."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL // 1024}k", "tmpfs", str(folder)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip()}); the RLIMIT_FSIZE test covers it")
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: frozenset({"avx2"}))  # auto is ONNX Runtime fp32
    monkeypatch.setenv("CLIPSEG_CACHE", str(folder))
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_cache_falls_back_to_torch_fp32_with_one_line(full_cache, weights, photo, tmp_path):
    done = clipseg("segment", photo, "car", "--weights", weights, "-o", tmp_path / "out")  # auto: ONNX Runtime fp32
    assert done.code == 0, done.stderr
    said = [line for line in done.stderr.splitlines() if "cache" in line and "summary" not in line
            and "mask(s) written" not in line]
    assert len(said) == 1 and "running fp32 with torch instead" in said[0], done.stderr
    assert "internal error" not in done.stderr
    assert (tmp_path / "out" / "photo.car.mask.png").exists()


def test_a_full_cache_makes_int8_a_one_line_setup_error(full_cache, weights, photo, tmp_path):
    done = clipseg("segment", photo, "car", "--weights", weights, "--precision", "int8", "-o", tmp_path / "out")
    assert done.code == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "cannot write the ONNX graph cache" in errors[0], done.stderr
    assert "internal error" not in done.stderr


def test_the_server_loads_on_a_full_cache(full_cache, weights):
    from clipseg_cli.predictor import ModelSpec

    segmenter = ModelSpec(str(weights), "cpu", "auto").load(progress=False)
    assert segmenter.identity["precision"] == "float32"


def test_a_graph_needed_mid_run_that_the_cache_cannot_take_runs_from_memory(tmp_path, weights, photo,
                                                                           monkeypatch):
    import shutil

    monkeypatch.setattr(runtime, "_cpu_flags", lambda: frozenset({"avx2"}))
    roomy = tmp_path / "roomy"
    monkeypatch.setenv("CLIPSEG_CACHE", str(roomy))
    assert clipseg("segment", photo, "car", "--weights", weights, "-o", tmp_path / "text", "-q").code == 0
    used = sum(path.stat().st_size for path in roomy.rglob("*") if path.is_file())
    folder = tmp_path / "tight"
    folder.mkdir()
    size_kb = used // 1024 + 48  # the text run's graphs and a little more: not the image tower's graph
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(folder)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip()})")
    try:
        shutil.copytree(roomy, folder / "cache")
        monkeypatch.setenv("CLIPSEG_CACHE", str(folder / "cache"))
        done = clipseg("segment", photo, "--prompt-image", photo, "--weights", weights, "-o", tmp_path / "out")
        assert done.code == 0, done.stderr
        said = [line for line in done.stderr.splitlines() if "cache" in line]
        assert len(said) == 1 and "running it from memory" in said[0], done.stderr
        assert len(list((tmp_path / "out").glob("photo.*.mask.png"))) == 1
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _limited() -> None:
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (SMALL, SMALL))


@pytest.mark.slow
@pytest.mark.parametrize(("precision", "code"), [("auto", 0), ("int8", 2)])
def test_files_that_may_not_grow_are_a_full_disk_too(weights, photo, tmp_path, precision, code):
    done = subprocess.run([sys.executable, "-m", "clipseg_cli", "segment", str(photo), "car", "--weights",
                           str(weights), "--precision", precision, "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=600, preexec_fn=_limited,
                          env=subprocess_env(CLIPSEG_CACHE=str(tmp_path / "cache")))
    assert done.returncode == code, done.stderr
    assert "internal error" not in done.stderr
    if code == 0:  # the store refused (torch fp32), or, where ONNX Runtime cuts the file short, it is read back
        assert ("running fp32 with torch instead" in done.stderr  # wrong and the exported graph runs from memory
                or "running it from memory, as exported, this time" in done.stderr), done.stderr
        assert (tmp_path / "out" / "photo.car.mask.png").is_file()
    else:  # the quantizer's temporary files cannot grow either
        errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
        assert len(errors) == 1 and ("cannot write the ONNX graph cache" in errors[0]
                                     or "cannot quantize the model in the temporary folder" in errors[0]), errors
    assert os.path.exists(tmp_path / "out" / "photo.car.mask.png") == (code == 0)
