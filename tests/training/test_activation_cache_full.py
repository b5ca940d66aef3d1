"""The activation cache of `train` on a full disk: it stops storing, says so once, and the run goes on."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from clipseg_cli.training.activation_cache import ArrayCache


@pytest.fixture
def small_disk(tmp_path: Path):
    folder = tmp_path / "tiny"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True,
                             text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_stops_the_cache_not_the_run(small_disk: Path) -> None:
    said: list[str] = []
    cache = ArrayCache(small_disk / "activations", max_bytes=10 << 30, log=said.append)
    arrays = [np.full((32, 32, 8), index, np.float32) for index in range(8)]  # 32 KB each: two fit at most
    for index, array in enumerate(arrays):
        cache.put(f"key{index}", array)
    assert len(said) == 1 and "cannot take more" in said[0]
    kept = [index for index in range(8) if cache.get(f"key{index}") is not None]
    assert kept and len(kept) < 8
    assert all(np.array_equal(cache.get(f"key{index}"), arrays[index]) for index in kept)
