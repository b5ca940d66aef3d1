"""What tests share: running the CLI as a user does, making images, reading what was written.

Fixtures live in conftest.py; the tiny checkpoints in factory.py; the fake Hub in hub_server.py.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from clipseg_cli.cli import main

SHARD_PROMPTS = ["-p", "car", "-p", "tree"]


@dataclass
class Outcome:
    """What a user sees of one run: exit code, stdout and stderr."""

    code: int
    stdout: str
    stderr: str

    def records(self) -> list[dict]:
        """The JSON lines of stdout; fails the test on any line that is not a JSON object."""
        records = [json.loads(line) for line in self.stdout.splitlines()]
        assert all(isinstance(record, dict) for record in records)
        return records

    def errors(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]


def clipseg(*args: object, stdin: str | None = None) -> Outcome:
    """Run ``clipseg ARGS`` in-process through ``main``, with stdin, stdout and stderr captured apart."""
    with CliRunner().isolation(input=stdin) as (stdout, stderr, _):
        code = main([str(arg) for arg in args])
        sys.stdout.flush()
        sys.stderr.flush()
        return Outcome(code, stdout.getvalue().decode(), stderr.getvalue().decode())


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONIOENCODING": "utf-8", **extra}
    env.pop("CLIPSEG_DEBUG", None)
    return env


def noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A random RGB image of (width, height)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def save(image: Image.Image, path: Path, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def pixels(path: Path | str, mode: str, size: tuple[int, int]) -> np.ndarray:
    """The pixels of a PNG we wrote, after checking its mode and size."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert (image.mode, image.size) == (mode, size), path
        return np.asarray(image)


def binary_mask(path: Path | str, size: tuple[int, int]) -> np.ndarray:
    """A mask's pixels as bool, after checking it is mode L with only 0 and 255."""
    mask = pixels(path, "L", size)
    assert set(np.unique(mask)) <= {0, 255}, path
    return mask == 255


def names(folder: Path) -> set[str]:
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}



# ---- shards and Ray: one small tree of inputs, run whole or in parts ----------------------------------


def make_folder(root: Path) -> Path:
    """Seven small images in a tree (two share a stem), and one broken file."""
    folder = root / "photos"
    for index, name in enumerate(["a.png", "b.jpg", "c.png", "same.png", "same.jpg", "sub/d.png", "sub/deep/e.png"]):
        save(noise((40 + 4 * index, 30), seed=index), folder / name)
    (folder / "sub" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return folder


def files(folder: Path) -> dict[str, bytes]:
    """Every output file under ``folder`` by relative path, leaving out the shards' own records."""
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file() and ".clipseg-shards" not in path.parts}


def run_batch(folder: Path, out: Path, checkpoint: Path, *args: object):
    return clipseg("batch", folder, "-r", *SHARD_PROMPTS, "-o", out, "--weights", checkpoint, "--precision", "fp32",
                   "--json", *args)


def same_records(records: list[dict], out: Path) -> list[str]:
    """The JSON records with the output folder left out of their paths, sorted: comparable across runs."""
    return sorted(json.dumps(record, sort_keys=True).replace(str(out), "OUT") for record in records)
