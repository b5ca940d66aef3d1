"""Watch mode: images that land in a watched folder are processed once they are complete."""

from __future__ import annotations

import os
import queue
import threading
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
