"""clipseg's caches: one root, checksums checked when used, entries kept while in use, `clipseg cache`."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import clipseg_cli.backends.graph_cache as onnx_cache_module
import clipseg_cli.runtime as runtime
from clipseg_cli.cachedir import seal
from factory import build_checkpoint, shapes_task, write_manifest
from helpers import clipseg

pytestmark = pytest.mark.usefixtures("offline")  # conftest: no network, no user cache
SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh cache root, and `--precision auto` on ONNX Runtime (as on a CPU without bf16 units)."""
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: frozenset({"avx2"}))
    monkeypatch.setenv("CLIPSEG_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("ckpt"), "plain")


def segment(photo: Path, weights: Path, out: Path, *extra: object):
    """Returns: (the run's Outcome, its masks' bytes by name)."""
    done = clipseg("segment", photo, "car", "--weights", weights, "--no-overlay", "-o", out, *extra)
    assert done.code == 0, done.stderr
    return done, {path.name: path.read_bytes() for path in sorted(out.glob("*.png"))}


def notes(stderr: str) -> list[str]:
    """Returns: the lines of stderr about the cache (a run without -q also prints its progress and summary)."""
    return [line for line in stderr.splitlines() if "cache" in line or "ONNX" in line]


# ---- item 19.7: every cached item is checked when used --------------------------------------------------


@pytest.mark.slow
def test_flipped_bytes_in_a_cached_graph_are_found_and_the_graph_exported_again(root, weights, photo, tmp_path):
    _, clean = segment(photo, weights, tmp_path / "clean", "-q")
    (data,) = root.glob("onnx/*/segment-fp32.onnx.data")
    for out, quiet in (("a", ()), ("b", ("-q",))):
        damaged = bytearray(data.read_bytes())
        middle = slice(len(damaged) // 4, len(damaged) // 2)
        damaged[middle] = bytes(byte ^ 0xFF for byte in damaged[middle])
        data.write_bytes(bytes(damaged))
        done, masks = segment(photo, weights, tmp_path / out, *quiet)
        assert masks == clean
        if quiet:
            assert done.stderr == ""
        else:
            (line,) = notes(done.stderr)
            assert str(data) in line and "checksum" in line and "exporting it again" in line


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["nan", "wrong shape", "flipped bytes"])
def test_a_damaged_cached_embedding_is_computed_again(damage, root, weights, photo, tmp_path):
    _, clean = segment(photo, weights, tmp_path / "clean", "-q")
    (stored,) = root.glob("embeddings/*/*.npy")
    good = np.load(stored)
    bad = {"nan": np.full_like(good, np.nan), "wrong shape": np.zeros(good.shape[0] + 3, np.float32)}.get(damage)
    if bad is None:
        data = bytearray(stored.read_bytes())
        data[-40] ^= 0xFF
        stored.write_bytes(bytes(data))
    else:  # a valid checksum: only the content's check can refuse it
        buffer = io.BytesIO()
        np.save(buffer, bad)
        stored.write_bytes(seal(buffer.getvalue()))
    done, masks = segment(photo, weights, tmp_path / "again")
    assert masks == clean
    (line,) = notes(done.stderr)
    assert str(stored) in line and "damaged" in line
    assert np.array_equal(np.load(stored), good)  # stored again


def test_zeroed_activation_files_are_computed_again_and_give_the_same_weights_and_losses(tmp_path):
    base = build_checkpoint(tmp_path / "base", "fine")
    manifest = write_manifest(tmp_path / "data" / "train.jsonl", shapes_task(tmp_path / "data", 6))
    cache = tmp_path / "activations"

    def train(out: str, *extra: str):
        done = clipseg("train", manifest, "--weights", base, "-o", tmp_path / out, "--precision", "fp32",
                       "--device", "cpu", "--cache-dir", cache, "--threads", "1", "--epochs", "3",
                       "--batch-size", "4", "--lr", "1e-2", "--val-fraction", "0.34", *extra)
        assert done.code == 0, done.stderr
        losses = [epoch["loss"] for epoch in json.loads((tmp_path / out / "training.json").read_text())["epochs"]]
        return done, {**load_file(tmp_path / out / "model.safetensors"), "losses": torch.tensor(losses[1:])}

    _, clean = train("clean", "-q")
    files = sorted(cache.glob("*.npy"))
    assert files
    for path in files:  # the arrays zeroed, their .npy headers kept: numpy reads them without complaint
        data = path.read_bytes()
        path.write_bytes(data[:128] + bytes(len(data) - 128))
        assert not np.load(path).any()
    done, again = train("again")
    assert all(torch.equal(clean[key], again[key]) for key in clean)
    damaged = [line for line in done.stderr.splitlines() if "cached activations" in line]
    # one line per damaged file read (a miss computes all variants of its image, replacing their files unread)
    assert 0 < len(damaged) <= len(files) and all("damaged" in line for line in damaged)


# ---- item 19.12: runs never remove each other's entries -------------------------------------------------


HOLD = """
import sys
from pathlib import Path
from clipseg_cli.backends.graph_cache import use
lock = use(Path(sys.argv[1]))
print("holding", flush=True)
sys.stdin.read()  # until the test closes the pipe
"""


@pytest.mark.slow
@pytest.mark.skipif(os.name != "posix", reason="fcntl locks")
def test_an_entry_another_process_holds_is_not_removed_by_a_cleanup(root, weights, photo, tmp_path):
    month_ago = time.time() - 40 * 86400
    held, free = root / "onnx" / ("a" * 24), root / "onnx" / ("b" * 24)
    for entry in (held, free):
        (entry / "segment-fp32.onnx").parent.mkdir(parents=True)
        (entry / "segment-fp32.onnx").write_bytes(b"an old release's graph")
        os.utime(entry, (month_ago, month_ago))
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(held)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": str(SRC)}, text=True)
    try:
        assert holder.stdout.readline() == "holding\n"
        os.utime(held.with_name(held.name + ".lock"), (month_ago, month_ago))  # held, though unused for 40 days
        segment(photo, weights, tmp_path / "out", "-q")  # exports a new entry: cleans up the others
        assert held.is_dir() and not free.exists()
        cleared = clipseg("cache", "clear")
        assert held.is_dir() and "1 in use" in cleared.stdout
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    clipseg("cache", "clear")
    assert not held.exists() and not list((root / "onnx").iterdir())


@pytest.mark.slow
def test_two_releases_sharing_a_cache_do_not_export_each_others_graphs_again(root, weights, photo, tmp_path,
                                                                             monkeypatch):
    exports = 0
    for run, release in enumerate(["1.0", "2.0"] * 3):
        monkeypatch.setattr(onnx_cache_module, "__version__", release)
        done, _ = segment(photo, weights, tmp_path / str(run))
        exports += done.stderr.count("preparing the model for this CPU")
    assert exports == 2
    assert len(list((root / "onnx").glob("*/segment-fp32.onnx"))) == 2


@pytest.mark.slow
def test_new_weights_in_the_same_folder_replace_the_old_entry_of_this_release(root, photo, tmp_path):
    weights = build_checkpoint(tmp_path / "ckpt", "plain")
    segment(photo, weights, tmp_path / "a", "-q")
    (old,) = (root / "onnx").glob("*/")
    build_checkpoint(weights, "plain", seed=5)
    segment(photo, weights, tmp_path / "b", "-q")
    (new,) = (root / "onnx").glob("*/")
    assert new != old


# ---- item 23.12: one root, `clipseg cache` ---------------------------------------------------------------


@pytest.mark.slow
def test_cache_lists_and_clears_entries_by_kind_and_age(root, weights, photo, tmp_path):
    segment(photo, weights, tmp_path / "out", "-q")
    (root / "activations").mkdir()
    (root / "activations" / ("c" * 64 + ".npy")).write_bytes(b"x" * 1000)
    listed = clipseg("cache")
    assert listed.code == 0 and str(root) in listed.stdout
    kinds = [line.split()[0] for line in listed.stdout.splitlines()[1:-1]]
    assert kinds == ["onnx", "embeddings", "activations"]
    assert str(weights.resolve()) in listed.stdout

    assert clipseg("cache", "clear", "--older-than", "1").stdout.startswith("removed 0 entries")
    assert clipseg("cache", "clear", "--what", "embeddings").code == 0
    assert not list(root.glob("embeddings/*")) and list(root.glob("onnx/*/segment-fp32.onnx"))
    segment(photo, weights, tmp_path / "again", "-q")  # the graphs were kept: no export; the embedding comes back
    assert list(root.glob("embeddings/*/*.npy"))

    bad = clipseg("cache", "clear", "--what", "graphs")
    assert bad.code == 2 and "graphs" in bad.stderr


@pytest.mark.slow
def test_cache_clear_never_touches_files_outside_the_root(root, weights, photo, tmp_path):
    segment(photo, weights, tmp_path / "out", "-q")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    (entry,) = (root / "onnx").glob("*/")
    (entry / "link-to-file").symlink_to(outside / "keep.txt")
    (root / "onnx" / ("d" * 24)).symlink_to(outside, target_is_directory=True)  # looks like an entry
    (root / "activations").symlink_to(outside, target_is_directory=True)
    done = clipseg("cache", "clear")
    assert done.code == 0, done.stderr
    assert (outside / "keep.txt").read_text() == "mine" and not entry.exists()


def test_the_cache_root_is_one_documented_folder_and_an_empty_hf_home_is_unset(tmp_path, monkeypatch):
    monkeypatch.delenv("CLIPSEG_CACHE")
    monkeypatch.setenv("HF_HOME", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    assert clipseg("cache").stdout.splitlines()[0] == f"clipseg cache: {tmp_path / 'xdg' / 'huggingface' / 'clipseg'}"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert clipseg("cache").stdout.splitlines()[0] == f"clipseg cache: {tmp_path / 'hf' / 'clipseg'}"
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("CLIPSEG_CACHE", str(tmp_path / "a-file"))
    refused = clipseg("cache")
    assert refused.code == 2 and refused.stderr.count("\n") == 1 and "not a folder" in refused.stderr
