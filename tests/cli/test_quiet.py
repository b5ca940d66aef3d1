"""`-q`: nothing on stderr but errors, ONNX Runtime's own messages included (issue 19 item 15)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from factory import build_checkpoint, probe_image
from helpers import subprocess_env

pytestmark = pytest.mark.usefixtures("offline")  # conftest: no network, no user cache
SRC = Path(__file__).resolve().parents[2] / "src"


def segment(photo: Path, weights: Path, out: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess:
    """``--precision int8`` runs on ONNX Runtime on every CPU. A real process: ONNX Runtime writes to the
    native stderr, which an in-process run would not capture."""
    command = [sys.executable, "-m", "clipseg_cli", "segment", str(photo), "car", "--weights", str(weights),
               "--no-overlay", "--precision", "int8", "-o", str(out), *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env=subprocess_env(PYTHONPATH=str(SRC), CLIPSEG_CACHE=str(cache)))


def masks(out: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(out.glob("*.png"))}


@pytest.mark.slow
def test_a_truncated_cached_graph_is_rebuilt_in_one_line_and_silently_under_q(tmp_path):
    weights = build_checkpoint(tmp_path / "ckpt", "plain")
    photo = tmp_path / "photo.png"
    probe_image(0).save(photo)
    cache = tmp_path / "cache"
    assert segment(photo, weights, tmp_path / "clean", cache, "-q").returncode == 0
    (graph,) = cache.glob("onnx/*/segment-int8.onnx")
    for out, quiet in (("quiet", ("-q",)), ("loud", ())):
        data = graph.read_bytes()
        graph.write_bytes(data[: len(data) // 2])
        done = segment(photo, weights, tmp_path / out, cache, *quiet)
        assert done.returncode == 0, done.stderr
        assert masks(tmp_path / out) == masks(tmp_path / "clean")
        lines = [line for line in done.stderr.splitlines() if "mask(s) written" not in line]
        if quiet:
            assert done.stderr == ""
        else:
            (line,) = lines
            assert str(graph) in line and "exporting it again" in line
