"""The Ray Data API with no Ray running starts the local Ray that ``clipseg batch --ray`` starts: on loopback
only (Ray Data would start one of its own, on every interface)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import ray

from clipseg_cli.scale.ray_data import read_image_files
from helpers import is_loopback, listening_sockets, noise, save


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="reads the sockets from /proc")
def test_read_image_files_starts_a_local_ray_on_loopback_only(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not ray.is_initialized()
    save(noise((20, 10)), tmp_path / "a.png")
    try:
        assert read_image_files(str(tmp_path)).count() == 1
        found = listening_sockets(os.getpid())
        assert {"gcs_server", "raylet"} <= {name for *_, name in found}
        assert [entry for entry in found if not is_loopback(entry[0])] == []
    finally:
        ray.shutdown()
