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
    (["segment", "-", "car", "--stdout", "overlay", "--overlay-combined"], b"x", "leave out --overlay-combined"),
    (["segment", "-", "car", "--stdout", "mask", "--overlay-combined"], b"x", "leave out --overlay-combined"),
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
    errors = [line for line in piped.stderr.decode().splitlines() if line.startswith("error:")]
    assert errors == ["error: - (stdin): not an image file (cannot identify format)"]  # not our private copy's path


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


@pytest.fixture
def large_photo(tmp_path: Path) -> Path:
    """An image whose overlay PNG (noise compresses badly) is far larger than a pipe's buffer (64 KiB)."""
    return save(noise((480, 360), seed=3), tmp_path / "photos" / "large.png")


@pytest.mark.slow
@pytest.mark.parametrize(("command", "read_first"), [("stdout", 10), ("stdout", 0), ("json", 0), ("cache", 0)],
                         ids=["stdout | head -c 10", "stdout | true", "json | true", "cache | true"])
def test_a_reader_that_goes_away_ends_the_command_with_141_and_no_error_line(large_photo, weights, tmp_path,
                                                                           read_first, command):
    args = {"stdout": ["segment", large_photo, "car", "--stdout", "overlay", *weights],
            "json": ["batch", large_photo, large_photo.parent, "-p", "car", "-p", "tree", "-o", tmp_path / "out",
                     "--json", *weights],
            "cache": ["cache"]}[command]
    process = subprocess.Popen([sys.executable, "-m", "clipseg_cli", *map(str, args)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=subprocess_env())
    head = process.stdout.read(read_first)  # blocks until the command has written that much: no timing guessed
    process.stdout.close()  # the reader is gone; what is left (a PNG of 400 KB) cannot fit in the pipe
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=300) == 141, stderr
    assert len(head) == read_first
    assert "internal error" not in stderr and "Traceback" not in stderr


def run_with_stdout_closed(*args: object) -> subprocess.CompletedProcess:
    """``clipseg ARGS >&-``: the shell closes file descriptor 1 before the command starts."""
    import os

    return subprocess.run([sys.executable, "-m", "clipseg_cli", *map(str, args)], stdin=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, env=subprocess_env(), timeout=300, preexec_fn=lambda: os.close(1))


@pytest.mark.slow
@pytest.mark.parametrize(("args", "code", "says"), [
    (["segment", "{photo}", "car", "--stdout", "mask"], 2, "--stdout writes the PNG to stdout, which is closed"),
    (["batch", "{photo}", "-p", "car", "-o", "{out}", "--json"], 2, "--json prints its lines to stdout"),
    (["--version"], 141, "stdout is closed"),
    (["cache"], 141, "stdout is closed"),
])
def test_a_closed_stdout_is_one_line(photo, weights, tmp_path, args, code, says):
    filled = [arg.format(photo=photo, out=tmp_path / "out") for arg in args]
    done = run_with_stdout_closed(*filled, *(weights if filled[0] in ("segment", "batch") else []))
    lines = done.stderr.decode().strip().splitlines()
    assert done.returncode == code, lines
    assert len(lines) == 1 and says in lines[0], lines
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_closed_stdout_is_fine_for_a_command_that_prints_nothing_there(photo, weights, tmp_path):
    done = run_with_stdout_closed("batch", photo, "-p", "car", "-o", tmp_path / "out", "-q", *weights)
    assert done.returncode == 0, done.stderr.decode()
    assert (tmp_path / "out" / "photo.car.mask.png").exists()


@pytest.mark.slow
def test_stdin_is_read_up_to_the_byte_equivalent_of_max_pixels_and_no_further(photo, weights):
    import threading

    limit = 5000 * 4 + (1 << 20)  # 4 bytes a pixel (8-bit RGBA, uncompressed) and 1 MiB of metadata; 3456 px here
    ok = run("segment", "-", "car", "--stdout", "mask", "--max-pixels", 5000, *weights,
             stdin=photo.read_bytes() + b"\0" * 1000)
    assert ok.returncode == 0, ok.stderr.decode()
    process = subprocess.Popen([sys.executable, "-m", "clipseg_cli", "segment", "-", "car", "--stdout", "mask",
                                "--max-pixels", "5000", *weights], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=subprocess_env())
    sent = [0]

    def feed() -> None:  # the image, then zeros without end: 64 times the limit unless the reader stops
        try:
            process.stdin.write(photo.read_bytes())
            block = b"\0" * 65536
            while sent[0] < 64 * limit:
                process.stdin.write(block)
                sent[0] += len(block)
            process.stdin.close()
        except BrokenPipeError:
            pass

    feeder = threading.Thread(target=feed)
    feeder.start()
    stdout, stderr = process.stdout.read(), process.stderr.read()
    feeder.join(timeout=300)
    assert process.wait(timeout=300) == 2
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "stdin holds more than" in lines[0] and "--max-pixels" in lines[0], lines
    assert stdout == b""
    assert sent[0] < 2 * limit  # it stopped reading at the bound (plus what the pipe holds)


@pytest.mark.slow
def test_batch_reads_paths_from_stdin_a_line_at_a_time_and_refuses_a_line_no_path_has(photo, weights, tmp_path):
    import threading

    ok = run("batch", "-", "-p", "car", "-o", tmp_path / "out", *weights, stdin=f"{photo}\r\n".encode())
    assert ok.returncode == 0, ok.stderr.decode()
    process = subprocess.Popen([sys.executable, "-m", "clipseg_cli", "batch", "-", "-p", "car", "-o",
                                str(tmp_path / "out2"), *weights], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=subprocess_env())
    sent = [0]

    def feed() -> None:  # a path, then zeros without a line end: 64 MiB unless the reader stops
        try:
            process.stdin.write(f"{photo}\n".encode())
            block = b"\0" * 65536
            while sent[0] < 64 << 20:
                process.stdin.write(block)
                sent[0] += len(block)
            process.stdin.close()
        except BrokenPipeError:
            pass

    feeder = threading.Thread(target=feed)
    feeder.start()
    stderr = process.stderr.read()
    process.stdout.read()
    feeder.join(timeout=300)
    assert process.wait(timeout=300) == 2
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "line 2 is longer than any path" in lines[0], lines
    assert sent[0] < 4 << 20  # it stopped reading at the long line (plus what the pipe holds)
    assert not (tmp_path / "out2").exists()
