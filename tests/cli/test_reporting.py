"""What a run reports and keeps bounded: JSON lines in input order and always valid UTF-8, a reader that
closes stdout, write errors that name the destination, and decoded pixels counted against --max-pixels.

Through the real entry points (``main`` in-process, ``python -m clipseg_cli``), looking at exit codes,
stdout and stderr lines, and files.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from clipseg_cli.cli import main
from clipseg_cli.constants import TEMP_SUFFIX
from clipseg_cli.imaging.writing import atomic_write


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONIOENCODING": "utf-8",
           **extra}
    env.pop("CLIPSEG_DEBUG", None)
    return env


def clipseg(*args: object) -> tuple[int, str, str]:
    """Run ``clipseg ARGS`` in-process: (exit code, stdout, stderr)."""
    with CliRunner().isolation() as (stdout, stderr, _):
        code = main([str(arg) for arg in args])
        sys.stdout.flush()
        sys.stderr.flush()
        return code, stdout.getvalue().decode(), stderr.getvalue().decode()


def noise_png(path: Path | bytes, seed: int = 0, size: tuple[int, int] = (48, 40)) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    with open(path, "wb") as stream:
        Image.fromarray(pixels).save(stream, format="PNG")


def claiming_png(path: Path, width: int, height: int) -> None:
    """A valid all-black grey PNG of width x height that takes a few KB on disk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    deflate = zlib.compressobj(9)
    row = bytes(width + 1)
    body = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(TEMP_SUFFIX)]


# ---- JSON lines ------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("encoding", ["utf-8", "utf-8:surrogateescape"])
def test_json_lines_are_valid_utf8_whatever_the_file_names(tmp_path: Path, checkpoint: Path, encoding: str) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    noise_png(os.fsencode(folder) + b"/\xff.png")  # a name that is not UTF-8
    (folder / "broken\udcfe.png").write_bytes(b"not a png")  # and another, of a file that fails
    noise_png(folder / "ok.png", seed=1)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "clipseg_cli", "batch", str(folder), "-p", "car", "-o", str(out),
                           "--weights", str(checkpoint), "--json"], env=subprocess_env(PYTHONIOENCODING=encoding),
                          capture_output=True, timeout=300)
    stderr = done.stderr.decode("utf-8")  # stderr too is valid UTF-8
    assert done.returncode == 1, stderr
    assert "Traceback" not in stderr
    records = [json.loads(line.decode("utf-8")) for line in done.stdout.splitlines()]  # strict UTF-8 JSON
    assert [(Path(r["image"]).name, r["status"]) for r in records] == [
        ("broken\\xfe.png", "failed"), ("ok.png", "ok"), ("\\xff.png", "ok")]
    assert records[2]["mask"] == str(out / "\\xff.car.mask.png")
    assert os.path.isfile(os.fsencode(out) + b"/\xff.car.mask.png")  # the file itself has the real name
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken\\xfe.png: not an image file" in errors[0]


def test_json_results_come_in_input_order_with_skipped_and_failed_items_between(
    tmp_path: Path, checkpoint: Path
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    names = [f"img{i:02d}.png" for i in range(12)]
    for i, name in enumerate(names):
        noise_png(folder / name, seed=i)
    out = tmp_path / "out"
    weights = ["--weights", checkpoint]
    assert clipseg("batch", folder / names[1], folder / names[6], "-p", "car", "-p", "tree", "-o", out, *weights,
                   "-q")[0] == 0
    for name in (names[2], names[9]):
        (folder / name).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # truncated: fails when decoded

    code, stdout, _ = clipseg("batch", folder, "-p", "car", "-p", "tree", "-o", out, *weights, "--json",
                              "--batch-size", "2")
    assert code == 1
    records = [json.loads(line) for line in stdout.splitlines()]
    assert [(Path(r["image"]).name, r["prompt"]) for r in records] == [(n, p) for n in names for p in ("car", "tree")]
    statuses = {Path(r["image"]).name: r["status"] for r in records if r["prompt"] == "car"}
    assert statuses[names[1]] == statuses[names[6]] == "skipped"
    assert statuses[names[2]] == statuses[names[9]] == "failed"


@pytest.mark.slow
def test_a_reader_that_closes_stdout_ends_the_run_quietly(tmp_path: Path, checkpoint: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(30):
        noise_png(folder / f"img{i:02d}.png", seed=i)
    out = tmp_path / "out"
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)  # 60 lines do not fit: the run cannot end first
    process = subprocess.Popen([sys.executable, "-m", "clipseg_cli", "batch", str(folder), "-p", "car", "-p", "tree",
                                "-o", str(out), "--weights", str(checkpoint), "--json"],
                               env=subprocess_env(), stdout=write_end, stderr=subprocess.PIPE)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as stdout:  # like `| head -1`
        first = stdout.readline()
    stderr = process.communicate(timeout=300)[1].decode()
    assert json.loads(first)["status"] == "ok"
    assert process.returncode == 141, stderr
    assert "Traceback" not in stderr and "Exception" not in stderr
    assert not [line for line in stderr.splitlines() if line.startswith("error:")]
    assert no_temp_files(tmp_path)
    for png in out.glob("*.png"):
        with Image.open(png) as image:
            image.load()


# ---- write errors name the destination --------------------------------------------------------------------------


def test_an_output_path_taken_by_a_folder_fails_that_image_only(tmp_path: Path, checkpoint: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, name in enumerate("abc"):
        noise_png(folder / f"{name}.png", seed=i)
    out = tmp_path / "out"
    (out / "b.car.mask.png").mkdir(parents=True)
    code, _, stderr = clipseg("batch", folder, "-p", "car", "-o", out, "--weights", checkpoint)
    assert code == 1
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: cannot write {out / 'b.car.mask.png'}: Is a directory"]
    assert (out / "a.car.mask.png").is_file() and (out / "c.car.mask.png").is_file()
    assert no_temp_files(tmp_path)


def test_a_name_too_long_is_reported_for_the_destination_not_the_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / ("é" * 130 + ".png")  # 264 bytes
    with pytest.raises(OSError) as raised:
        atomic_write(path, lambda handle: handle.write(b"data"))
    assert raised.value.errno == errno.ENAMETOOLONG and raised.value.filename == str(path)
    assert list(tmp_path.iterdir()) == []


def test_any_name_that_fits_can_be_written_whatever_its_characters(tmp_path: Path) -> None:
    for name in ("\U0001f600" * 62 + ".png", "é" * 125 + ".png", "a" * 251 + ".png"):  # 252, 254 and 255 bytes
        atomic_write(tmp_path / name, lambda handle: handle.write(b"data"))
        assert (tmp_path / name).read_bytes() == b"data"
    assert no_temp_files(tmp_path)


# ---- decoded pixels count against --max-pixels ------------------------------------------------------------------

PEAK = """
import resource, sys
from clipseg_cli.cli import main
code = main(sys.argv[1:])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, code, file=sys.stderr)
"""


def peak_bytes(folder: Path, out: Path, checkpoint: Path) -> int:
    """The peak memory of a batch run over `folder` with --max-pixels 16,000,000, in its own process."""
    done = subprocess.run([sys.executable, "-c", PEAK, "batch", str(folder), "-p", "car", "-o", str(out),
                           "--weights", str(checkpoint), "--no-overlay", "--max-pixels", "16000000", "-q"],
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    peak, code = done.stderr.split()[-2:]
    assert code == "0", done.stderr
    return int(peak)


@pytest.mark.slow
def test_images_decoded_ahead_hold_at_most_twice_max_pixels(tmp_path: Path, checkpoint: Path) -> None:
    """Eight small files that each decode to 4000 x 4000 (48 MB as RGB) do not all sit in memory at once."""
    one, eight = tmp_path / "one", tmp_path / "eight"
    for folder, count in ((one, 1), (eight, 8)):
        folder.mkdir()
        for i in range(count):
            claiming_png(folder / f"big{i}.png", 4000, 4000)
    image_bytes = 4000 * 4000 * 3
    extra = peak_bytes(eight, tmp_path / "out8", checkpoint) - peak_bytes(one, tmp_path / "out1", checkpoint)
    # at most two images decoded ahead, plus the two being written; all eight took about 11 images' worth
    assert extra < 6 * image_bytes, f"{extra / image_bytes:.1f} images' worth"
    assert len(list((tmp_path / "out8").glob("*.mask.png"))) == 8


@pytest.mark.slow
def test_a_named_pipe_among_the_inputs_fails_without_blocking_the_run(tmp_path: Path, checkpoint: Path) -> None:
    """Pixels are counted from headers before decoding; a FIFO is never opened (that would wait for a writer)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    noise_png(folder / "a.png")
    os.mkfifo(folder / "b.png")
    done = subprocess.run([sys.executable, "-m", "clipseg_cli", "batch", str(folder), "-p", "car", "-o",
                           str(tmp_path / "out"), "--weights", str(checkpoint)], env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {folder / 'b.png'}: not a regular file"]
    assert (tmp_path / "out" / "a.car.mask.png").is_file()


def test_prompt_image_counts_against_max_pixels(tmp_path: Path, checkpoint: Path) -> None:
    photo = tmp_path / "photo.png"
    noise_png(photo)
    example = tmp_path / "example.png"
    claiming_png(example, 3000, 3000)
    code, _, stderr = clipseg("segment", photo, "--prompt-image", example, "--max-pixels", "1000000",
                              "--weights", checkpoint)
    assert code == 2
    assert stderr.splitlines()[-1] == (f"error: {example}: image is 3000x3000 = 9000000 pixels, over the limit of "
                                       "1000000 (raise it with --max-pixels)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["example.png", "photo.png"]
