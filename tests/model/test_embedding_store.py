"""The prompt-embedding store on disk: bounded like the one in memory, and cleared while a server runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import clipseg_cli.backends.graph_cache as graph_cache
import clipseg_cli.runtime as runtime
from factory import build_checkpoint, probe_image
from helpers import clipseg

SRC = Path(__file__).resolve().parents[2] / "src"
HOLD = """
import sys
from pathlib import Path
from clipseg_cli.backends.graph_cache import use
lock = use(Path(sys.argv[1]))
print("holding", flush=True)
sys.stdin.read()  # until the test closes the pipe
"""


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh cache root, and `--precision auto` on ONNX Runtime (as on a CPU without bf16 units)."""
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: frozenset({"avx2"}))
    monkeypatch.setenv("CLIPSEG_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def stored(entry: Path) -> list[Path]:
    return sorted(graph_cache.embeddings_dir(entry).glob("*.npy"))


def test_the_store_keeps_the_most_recently_used_up_to_its_bound(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(graph_cache, "EMBEDDING_LIMIT", 5)
    entry = root / "onnx" / ("a" * 24)
    ids = [np.array([49406, 100 + index, 49407]) for index in range(9)]
    for index in range(5):
        graph_cache.store_embedding(entry, ids[index], np.full(8, index, np.float32))
        path = graph_cache._embedding_path(entry, ids[index])
        os.utime(path, ns=(index * 10**9, index * 10**9))  # stored in this order, a second apart
    assert graph_cache.load_embedding(entry, ids[0], 8) is not None  # the oldest, used again: now the newest
    for index in range(5, 9):
        graph_cache.store_embedding(entry, ids[index], np.full(8, index, np.float32))
    kept = {int(graph_cache.load_embedding(entry, ids[index], 8)[0]) for index in range(9)
            if graph_cache.load_embedding(entry, ids[index], 8) is not None}
    assert len(stored(entry)) == 5
    assert kept == {0, 5, 6, 7, 8}


def test_a_run_with_more_prompts_than_the_bound_leaves_the_bound(root: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(graph_cache, "EMBEDDING_LIMIT", 3)
    weights = build_checkpoint(tmp_path / "ckpt", "plain")
    photo = tmp_path / "photo.png"
    probe_image(0).save(photo)
    prompts = [f"thing {index}" for index in range(7)]
    done = clipseg("segment", photo, *prompts, "--weights", weights, "--no-overlay", "-o", tmp_path / "out", "-q")
    assert done.code == 0, done.stderr
    [entry] = (root / "onnx").glob("*/")
    assert len(stored(entry)) == 3


@pytest.mark.slow
@pytest.mark.skipif(os.name != "posix", reason="fcntl locks")
@pytest.mark.parametrize("args", [[], ["--what", "embeddings"]], ids=["all", "embeddings"])
def test_cache_clear_removes_the_embeddings_of_an_entry_a_running_process_holds(root: Path, args: list[str]) -> None:
    held = root / "onnx" / ("a" * 24)
    (held / "segment-fp32.onnx").parent.mkdir(parents=True)
    (held / "segment-fp32.onnx").write_bytes(b"a graph")
    for index in range(3):
        graph_cache.store_embedding(held, np.array([index]), np.zeros(8, np.float32))
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(held)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": str(SRC)}, text=True)
    try:
        assert holder.stdout.readline() == "holding\n"  # the entry is held from here on
        cleared = clipseg("cache", "clear", *args)
        assert cleared.code == 0, cleared.stderr
        assert stored(held) == []
        assert (held / "segment-fp32.onnx").exists()  # the graphs in use are left
        graph_cache.store_embedding(held, np.array([7]), np.zeros(8, np.float32))  # the holder stores again
        assert len(stored(held)) == 1
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
