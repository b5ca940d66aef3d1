"""Watch mode: images that land in a watched folder are processed once they are complete."""

from __future__ import annotations

import os
import queue
import threading
from pathlib import Path

from clipseg_cli.watch import ready_files
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


def test_a_file_written_in_chunks_is_yielded_once_whole_and_only_images_count(tmp_path):
    (tmp_path / "out").mkdir()
    watcher = Watcher(tmp_path, recursive=False, skip=tmp_path / "out", settle=0.5)
    try:
        source = tmp_path.parent / "source.png"
        save(noise((64, 48)), source)
        data = source.read_bytes()
        (tmp_path / "notes.txt").write_text("not an image")
        (tmp_path / "out" / "x.png").write_bytes(data)  # under the output folder: never counts
        with open(tmp_path / "slow.png", "wb") as file:
            for start in range(0, len(data), 97):
                file.write(data[start:start + 97])
                file.flush()
        assert watcher.until(tmp_path / "slow.png") == {(tmp_path / "slow.png").resolve()}
        staged = tmp_path.parent / "staged.png"
        staged.write_bytes(data)
        os.replace(staged, tmp_path / "renamed.png")  # renamed into the folder
        both = {(tmp_path / name).resolve() for name in ("slow.png", "renamed.png")}
        assert watcher.until(tmp_path / "renamed.png") <= both
        save(noise((32, 32), 1), tmp_path / "slow.png")  # replaced: yielded again
        assert watcher.until(tmp_path / "slow.png") <= both
    finally:
        watcher.close()
