"""Stopping a run from outside: SIGTERM, SIGHUP and Ctrl-C in a real process, and what a killed run left behind.

Every test looks at what a user would notice: exit codes, the summary on stderr, files on disk.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipseg_cli.cli import main
from clipseg_cli.constants import TEMP_SUFFIX
from clipseg_cli.imaging.writing import atomic_write
from helpers import read_all, start_held, wait_until_held


def images(folder: Path, count: int) -> Path:
    """`count` small random PNGs in `folder`."""
    folder.mkdir(parents=True)
    for i in range(count):
        pixels = np.random.default_rng(i).integers(0, 256, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:03d}.png")
    return folder


def assert_only_whole_files(folder: Path) -> None:
    """No temporary file is left, and every PNG decodes completely."""
    assert not [p for p in folder.rglob("*") if p.name.endswith(TEMP_SUFFIX)]
    for png in folder.rglob("*.png"):
        with Image.open(png) as image:
            image.load()


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)])
def test_a_stop_signal_finishes_the_files_in_flight_and_the_summary_counts_them(
    tmp_path: Path, checkpoint: Path, signum: int, code: int
) -> None:
    folder = images(tmp_path / "many", 30)
    out = tmp_path / "out"
    process, stdout = start_held([sys.executable, "-m", "clipseg_cli", "batch", str(folder), "-p", "red car",
                                  "-p", "tree", "-o", str(out), "--weights", str(checkpoint), "--json"])
    wait_until_held(process, stdout)  # 60 JSON lines do not fit: the run waits until the signal has landed
    process.send_signal(signum)
    reader, chunks = read_all(stdout)
    stderr = process.communicate(timeout=120)[1].decode()
    reader.join(timeout=60)

    assert process.returncode == code, stderr
    assert "Traceback" not in stderr
    name = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    assert f"error: {name}; finished outputs are complete, rerun to do the rest" in stderr.splitlines()
    summary = re.search(r"clipseg: (\d+) mask\(s\) written, (\d+) skipped", stderr)
    assert summary, stderr
    masks = list(out.glob("*.mask.png"))
    assert int(summary[1]) == len(masks) < 60  # what is on disk, not only what was printed
    assert_only_whole_files(tmp_path)
    records = [json.loads(line) for line in chunks[0].decode("utf-8").splitlines()]
    assert {r["status"] for r in records} <= {"ok"}


def test_a_run_started_with_sighup_ignored_keeps_ignoring_it(tmp_path: Path, checkpoint: Path) -> None:
    """Like `nohup clipseg batch ...`: closing the terminal does not stop the run."""
    folder = images(tmp_path / "many", 30)
    out = tmp_path / "out"
    process, stdout = start_held([sys.executable, "-m", "clipseg_cli", "batch", str(folder), "-p", "red car", "-p",
                                  "tree", "-o", str(out), "--weights", str(checkpoint), "--json"],
                                 ignored=(signal.SIGHUP,))
    wait_until_held(process, stdout)  # the signal lands mid-run
    process.send_signal(signal.SIGHUP)
    reader, chunks = read_all(stdout)
    stderr = process.communicate(timeout=120)[1].decode()
    reader.join(timeout=60)
    assert process.returncode == 0, stderr
    assert len(list(out.glob("*.mask.png"))) == 60 == len(chunks[0].splitlines())


def test_signal_handlers_are_restored_after_a_command(tmp_path: Path, checkpoint: Path) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    main(["batch", str(images(tmp_path / "few", 1)), "-p", "car", "-o", str(tmp_path / "out"), "--weights",
          str(checkpoint), "-q"])
    assert {s: signal.getsignal(s) for s in before} == before


# ---- leftovers of a killed run ---------------------------------------------------------------------------------


def our_temp_name(folder: Path) -> re.Match[str]:
    """The name our writer gives a temporary file in `folder` (seen while it writes), split into its parts."""
    seen: list[str] = []
    atomic_write(folder / "probe.bin", lambda handle: seen.extend(p.name for p in folder.iterdir()
                                                                   if p.name.endswith(TEMP_SUFFIX)))
    (folder / "probe.bin").unlink()
    match = re.fullmatch(r"\.probe\.bin\.([0-9a-f]{8})-(\d+)-[0-9a-f]{8}" + re.escape(TEMP_SUFFIX), seen[0])
    assert match and int(match[2]) == os.getpid(), seen
    return match


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_new_run_removes_only_stale_temporary_files_of_ours(tmp_path: Path, checkpoint: Path) -> None:
    photo = images(tmp_path / "photos", 1) / "img000.png"
    out = tmp_path / "out"
    out.mkdir()
    host = our_temp_name(out)[1]
    hours_ago = time.time() - 2 * 3600
    stale = {
        f".a.car.mask.png.{host}-{dead_pid()}-0123abcd{TEMP_SUFFIX}": None,  # its writer died
        f".b.car.mask.png.{host}-{os.getpid()}-0123abcd{TEMP_SUFFIX}": hours_ago,  # too old for a live write
        f".c.car.mask.png.0123abcd{TEMP_SUFFIX}": hours_ago,  # named by an older version
        f".d.car.mask.png.ffffffff-1-0123abcd{TEMP_SUFFIX}": hours_ago,  # another host's, old
    }
    alive = {
        f".e.car.mask.png.{host}-{os.getpid()}-0123abcd{TEMP_SUFFIX}": None,  # a live writer's (this process)
        f".f.car.mask.png.ffffffff-{dead_pid()}-0123abcd{TEMP_SUFFIX}": None,  # another host's, fresh
        f".g.car.mask.png.0123abcd{TEMP_SUFFIX}": None,  # an older version's, fresh
        f".notes{TEMP_SUFFIX}": hours_ago,  # not named like ours
        "notes.txt": hours_ago,
    }
    for name, mtime in {**stale, **alive}.items():
        (out / name).write_bytes(b"partial")
        if mtime is not None:
            os.utime(out / name, (mtime, mtime))

    code = main(["batch", str(photo), "-p", "car", "-o", str(out), "--weights", str(checkpoint), "-q"])
    assert code == 0
    left = {p.name for p in out.iterdir()}
    assert left == set(alive) | {"img000.car.mask.png", "img000.car.overlay.png"}
