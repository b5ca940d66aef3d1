"""Fail before the slow part: a missing image and a rerun with nothing to do never load a model (issue 23 item 5)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SRC = Path(__file__).resolve().parents[2] / "src"
# Writes the names of the modules loaded when the process ends: whether torch, transformers or
# onnxruntime (what a model needs) were imported at all.
SITECUSTOMIZE = """
import atexit, os, sys
atexit.register(lambda: open(os.environ["MODULES_OUT"], "w").write("\\n".join(sorted(sys.modules))))
"""
MODEL_MODULES = {"torch", "transformers", "onnxruntime"}


def clipseg(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run the CLI in a fresh process; returns the outcome and the top-level modules it imported."""
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    listing = tmp_path / "modules.txt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), str(SRC)]), "MODULES_OUT": str(listing)}
    done = subprocess.run([sys.executable, "-m", "clipseg_cli", *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path)
    return done, {name.split(".")[0] for name in listing.read_text().split()}


def test_a_missing_image_exits_2_before_any_model_code(tmp_path, weights) -> None:
    done, modules = clipseg(tmp_path, "segment", "missing.jpg", "car", *weights)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: missing.jpg: no such file"]
    assert not modules & MODEL_MODULES


@pytest.mark.slow
def test_a_rerun_with_every_output_up_to_date_loads_no_model(tmp_path, weights) -> None:
    for name in ("a.png", "b.png"):
        Image.fromarray(np.random.default_rng(len(name)).integers(0, 255, (40, 50, 3), np.uint8)).save(tmp_path / name)
    first, modules = clipseg(tmp_path, "batch", ".", "-p", "car", "-p", "tree", "-o", "out", *weights, "--json")
    assert first.returncode == 0 and modules & MODEL_MODULES  # the control: a run that writes loads the model
    for command in (["batch", ".", "-p", "car", "-p", "tree", "-o", "out"], ["segment", "a.png", "car", "-o", "out"]):
        again, modules = clipseg(tmp_path, *command, *weights, "-v", "--json")
        assert again.returncode == 0, again.stderr
        assert "no model loaded: the outputs of all" in again.stderr
        assert not modules & MODEL_MODULES
        assert {line.count('"status": "skipped"') for line in again.stdout.splitlines()} == {1}
    changed, modules = clipseg(tmp_path, "batch", ".", "-p", "car", "-o", "out", "-t", "0.3", *weights, "-v")
    assert changed.returncode == 0 and "no model loaded" not in changed.stderr and modules & MODEL_MODULES
