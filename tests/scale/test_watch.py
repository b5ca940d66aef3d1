"""Watch mode: images that land in a watched folder are processed once they are complete."""

from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path

import pytest

from clipseg_cli.scale.watch import ready_files
from helpers import noise, save


class Watcher:
    """ready_files in a thread; ``next()`` waits (bounded) for the next set of complete files."""

    def __init__(self, folder: Path, **options) -> None:
        self.stop = threading.Event()
        self.found: queue.Queue[set[Path]] = queue.Queue()
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(folder,), kwargs=options, daemon=True)
        self.thread.start()

    def _run(self, folder: Path, **options) -> None:
        for files in ready_files([folder], stop=self.stop, **options):
            self.found.put(files)

    def until(self, path: Path, timeout: float = 60) -> set[Path]:
        """Every file yielded until ``path`` is (a slow writer may make a file look complete early)."""
        seen: set[Path] = set()
        while path.resolve() not in seen:
            seen |= self.found.get(timeout=timeout)
        return seen

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


@pytest.mark.slow
def test_batch_watch_processes_what_lands_as_a_plain_run_would_and_stops_on_sigterm(tmp_path, checkpoint):
    import signal
    import subprocess
    import sys
    import time

    import numpy as np
    from PIL import Image

    from helpers import clipseg, subprocess_env

    inbox, out, plain = tmp_path / "in", tmp_path / "out", tmp_path / "plain"
    save(noise((40, 30), 1), inbox / "a.png")
    weights = ["-w", str(checkpoint), "-p", "car", "--no-overlay"]
    process = subprocess.Popen([sys.executable, "-m", "clipseg_cli", "batch", str(inbox), "-o", str(out), *weights,
                                "--watch"], stderr=subprocess.PIPE, env=subprocess_env())
    lines: list[str] = []
    watching = threading.Event()

    def read_stderr() -> None:  # drained all along, so that the child never blocks on a full pipe
        for line in process.stderr:
            lines.append(line.decode())
            if "watching" in lines[-1]:
                watching.set()
        watching.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        assert watching.wait(timeout=240) and process.poll() is None, "".join(lines)
        data = save(noise((48, 32), 2), tmp_path / "b.png").read_bytes()
        with open(inbox / "b.png", "wb") as file:  # copied in slowly, in chunks
            for start in range(0, len(data), 512):
                file.write(data[start:start + 512])
                file.flush()
                time.sleep(0.02)
        save(noise((30, 40), 3), tmp_path / "c.png")
        os.replace(tmp_path / "c.png", inbox / "c.png")  # renamed into the folder
        save(noise((40, 30), 4), tmp_path / "a2.png")
        os.replace(tmp_path / "a2.png", inbox / "a.png")  # replaced
        done = clipseg("batch", inbox, "-o", plain, *weights)
        assert done.code == 0, done.stderr

        def masks(folder: Path) -> dict[str, bytes]:
            return {p.name: np.asarray(Image.open(p)).tobytes() for p in sorted(folder.glob("*.mask.png"))}

        deadline = time.monotonic() + 240  # a bound, not a timing: the loop ends as soon as the files agree
        while masks(out) != masks(plain):
            assert time.monotonic() < deadline, (sorted(masks(out)), sorted(masks(plain)))
            assert process.poll() is None, "".join(lines)
            time.sleep(0.2)
        assert sorted(masks(out)) == ["a.car.mask.png", "b.car.mask.png", "c.car.mask.png"]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
        reader.join(timeout=30)
    rest = "".join(lines)
    assert process.returncode == 128 + signal.SIGTERM, rest
    assert "Traceback" not in rest
    assert not [p for p in out.rglob("*") if p.name.endswith(".clipseg-tmp")]


def test_files_written_right_after_their_folder_is_made_are_seen(tmp_path):
    inbox = tmp_path / "in"
    inbox.mkdir()
    watcher = Watcher(inbox, recursive=True, settle=0.05, since_ns=time.time_ns())
    try:
        save(noise((8, 8), 0), inbox / "first.png")
        watcher.until(inbox / "first.png")  # the watch is set up
        made = []
        for index in range(5):
            folder = inbox / f"new{index}" / "deep"
            os.makedirs(folder)  # and at once a file in it, before a watch on it can exist
            made.append(save(noise((8, 8), index), folder / "photo.png"))
            ready = save(noise((8, 8), index), tmp_path / f"outside{index}" / "deep" / "photo.png")
            os.rename(tmp_path / f"outside{index}", inbox / f"moved{index}")  # a whole tree moved in: one event
            made.append(inbox / f"moved{index}" / "deep" / ready.name)
        marker = save(noise((8, 8), 9), inbox / "marker.png")  # written last, into a folder watched all along
        seen = watcher.until(marker)
        assert {path.resolve() for path in made} <= seen
    finally:
        watcher.close()


def test_a_file_its_writer_holds_open_is_not_complete_however_long_it_rests(tmp_path):
    inbox = tmp_path / "in"
    inbox.mkdir()
    data = save(noise((64, 64), 1), tmp_path / "whole.png").read_bytes()
    watcher = Watcher(inbox, recursive=False, settle=0.05, since_ns=time.time_ns())
    try:
        save(noise((8, 8), 0), inbox / "first.png")
        watcher.until(inbox / "first.png")
        held = inbox / "held.png"
        with open(held, "wb") as writer:
            writer.write(data[: len(data) // 2])
            writer.flush()
            marker = save(noise((8, 8), 2), inbox / "marker.png")  # rests as long as the held file, and more
            seen = watcher.until(marker)
            assert held.resolve() not in seen  # half a file, still open: not complete
            writer.write(data[len(data) // 2:])
        assert held.resolve() in watcher.until(held)  # closed by its writer: complete
        assert held.read_bytes() == data
    finally:
        watcher.close()


@pytest.mark.slow
def test_a_symlink_loop_is_one_line_and_a_stem_collision_ends_as_a_plain_rerun(tmp_path, checkpoint):
    import signal
    import subprocess
    import sys
    import time

    from helpers import clipseg, subprocess_env

    inbox, out, plain = tmp_path / "in", tmp_path / "out", tmp_path / "plain"
    save(noise((40, 30), 1), inbox / "a.jpg", format="JPEG")
    weights = ["-w", str(checkpoint), "-p", "car", "--precision", "fp32"]
    process = subprocess.Popen([sys.executable, "-m", "clipseg_cli", "batch", str(inbox), "-o", str(out), *weights,
                                "--watch"], stderr=subprocess.PIPE, env=subprocess_env())
    lines: list[str] = []
    watching, looped = threading.Event(), threading.Event()

    def read_stderr() -> None:  # drained all along, so that the child never blocks on a full pipe
        for line in process.stderr:
            lines.append(line.decode())
            if "watching" in lines[-1]:
                watching.set()
            if "loop.jpg" in lines[-1]:
                looped.set()
        watching.set()
        looped.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        assert watching.wait(timeout=240) and process.poll() is None, "".join(lines)
        assert sorted(p.name for p in out.iterdir()) == ["a.car.mask.png", "a.car.overlay.png"]
        os.symlink("loop.jpg", inbox / "loop.jpg")  # leads to itself
        assert looped.wait(timeout=240) and process.poll() is None, "".join(lines)  # said, and still watching
        assert [line for line in lines if "loop.jpg" in line] == \
            [f"error: {inbox / 'loop.jpg'}: cannot read file (Too many levels of symbolic links)\n"]
        os.unlink(inbox / "loop.jpg")  # a plain run of the folder has no loop to report
        save(noise((48, 32), 2), tmp_path / "a.png")
        os.replace(tmp_path / "a.png", inbox / "a.png")  # a.jpg is a_jpg from now on, in a plain run
        done = clipseg("batch", inbox, "-o", plain, *weights)
        assert done.code == 0, done.stderr

        def outputs(folder: Path) -> dict[str, bytes]:
            return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}

        deadline = time.monotonic() + 240  # a bound, not a timing: the loop ends as soon as the files agree
        while outputs(out) != outputs(plain):
            assert time.monotonic() < deadline, (sorted(outputs(out)), sorted(outputs(plain)), "".join(lines))
            assert process.poll() is None, "".join(lines)
            time.sleep(0.2)
        assert sorted(outputs(out)) == ["a_jpg.car.mask.png", "a_jpg.car.overlay.png", "a_png.car.mask.png",
                                        "a_png.car.overlay.png"]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
        reader.join(timeout=30)
    rest = "".join(lines)
    assert process.returncode == 128 + signal.SIGTERM, rest
    assert "internal error" not in rest and "Traceback" not in rest
