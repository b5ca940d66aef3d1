"""Pipes: `clipseg segment - PROMPT --stdout KIND` reads image bytes on stdin and writes one PNG to stdout."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from helpers import clipseg, noise, save, subprocess_env


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    return save(noise((72, 48)), tmp_path / "photos" / "photo.png")


def run(*args: object, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clipseg_cli", *map(str, args)], input=stdin, capture_output=True,
                          env=subprocess_env(), timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mask", "soft", "overlay", "cutout"])
def test_image_bytes_in_one_png_out_equal_to_the_file_segment_writes(photo, weights, tmp_path, kind):
    piped = run("segment", "-", "red car", "--stdout", kind, *weights, stdin=photo.read_bytes())
    assert piped.returncode == 0, piped.stderr.decode()
    flags = {"mask": ["--no-overlay"], "soft": ["--no-overlay", "--soft"], "overlay": [],
             "cutout": ["--no-overlay", "--cutout"]}[kind]
    done = clipseg("segment", photo, "red car", *weights, "-o", tmp_path / "files", *flags)
    assert done.code == 0, done.stderr
    name = f"photo.red-car.{'mask' if kind == 'soft' else kind}.png"
    assert piped.stdout == (tmp_path / "files" / name).read_bytes()
    assert Image.open(io.BytesIO(piped.stdout)).size == (72, 48)
    assert sorted(p.name for p in photo.parent.iterdir()) == ["photo.png"]  # no file written anywhere


def test_a_file_argument_with_stdout_writes_no_file(photo, weights):
    piped = run("segment", photo, "red car", "--stdout", "mask", *weights)
    assert piped.returncode == 0, piped.stderr.decode()
    assert piped.stdout.startswith(b"\x89PNG")
    assert sorted(p.name for p in photo.parent.iterdir()) == ["photo.png"]


@pytest.mark.slow
@pytest.mark.parametrize(("args", "stdin", "says"), [
    (["segment", "-", "car"], b"x", "needs --stdout"),
    (["segment", "-", "car", "tree", "--stdout", "mask"], b"x", "give one prompt"),
    (["segment", "-", "car", "--stdout", "mask", "--json"], b"x", "leave out --json"),
    (["segment", "-", "car", "--stdout", "mask"], b"", "stdin is empty"),
])
def test_pipe_misuse_is_one_line_before_the_model_loads(weights, args, stdin, says):
    piped = run(*args, *weights, stdin=stdin)
    assert piped.returncode == 2
    assert piped.stdout == b""
    lines = piped.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and says in lines[0], lines


def test_not_an_image_on_stdin_fails_with_one_line_and_nothing_on_stdout(weights):
    piped = run("segment", "-", "car", "--stdout", "mask", *weights, stdin=b"not an image at all")
    assert piped.returncode == 1
    assert piped.stdout == b""
    assert "error" in piped.stderr.decode()


@pytest.mark.slow
def test_a_png_is_never_written_to_a_terminal(photo, weights):
    import pty

    parent, child = pty.openpty()
    try:
        done = subprocess.run([sys.executable, "-m", "clipseg_cli", "segment", str(photo), "car", "--stdout", "mask",
                               *weights], stdout=child, stderr=subprocess.PIPE, env=subprocess_env(), timeout=300)
    finally:
        import os

        os.close(child)
        os.close(parent)
    assert done.returncode == 2
    assert "refusing to write a PNG to a terminal" in done.stderr.decode()
