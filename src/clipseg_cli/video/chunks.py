"""A long video's finished chunks, kept so that a killed run resumes where it stopped.

One hidden folder per video beside its outputs (`clipseg_cli.video.files.work_folder`) holds:
``key`` (what made the chunks: every output's fingerprint record, the chunk length, the batch size),
and per finished chunk c its files ``{c:06d}.{label}.{kind}.mkv``, the state of ``--smooth`` after it
(``{c:06d}.state.npz``) and, written last, ``{c:06d}.frames.json`` (the source frames' timestamps):
a chunk counts only once that is there. Another key empties the folder; the folder goes once the
outputs are whole.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np

from clipseg_cli.fingerprint import text_sha256
from clipseg_cli.imaging.writing import atomic_write


class ChunkStore:
    """The finished chunks of one video's run.

    folder: where they are kept. key: what made them (`key_of`). names: each chunk's files, as
    ``(label, kind)`` pairs.
    """

    def __init__(self, folder: Path, key: str, names: list[tuple[str, str]]) -> None:
        self.folder, self.key, self.names = folder, key, names

    @staticmethod
    def key_of(records: list[str], chunk_frames: int, batch_size: int) -> str:
        """Returns: the key of a run's chunks: its outputs' records, chunk length and batch size."""
        return text_sha256(json.dumps([sorted(records), chunk_frames, batch_size]))

    def open(self) -> list[list[tuple[int, int]]]:
        """Take up the chunks a run with this key finished before (none when the key differs).

        Returns:
            Per finished chunk, in order, the (pts, duration) of its frames.
        """
        key_file = self.folder / "key"
        try:
            same = key_file.read_text(encoding="ascii") == self.key
        except (OSError, UnicodeDecodeError):
            same = False
        if not same:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write(key_file, lambda handle: handle.write(self.key.encode()))
            return []
        done = []
        while True:
            frames_file = self.folder / f"{len(done):06d}.frames.json"
            if not frames_file.is_file() or not all(self.path(len(done), *name).is_file() for name in self.names):
                break
            try:
                done.append([(int(pts), int(duration)) for pts, duration in json.loads(frames_file.read_text())])
            except (OSError, ValueError, TypeError):
                break
        return done

    def path(self, chunk: int, label: str, kind: str) -> Path:
        """Returns: the file of one output kind's chunk."""
        return self.folder / f"{chunk:06d}.{label}.{kind}.mkv"

    def state(self, chunk: int) -> dict[str, np.ndarray]:
        """Returns: the smoothing state saved after ``chunk`` (empty where none was saved)."""
        try:
            with np.load(self.folder / f"{chunk:06d}.state.npz") as saved:
                return {name: saved[name] for name in saved.files}
        except (OSError, ValueError):
            return {}

    def finish(self, chunk: int, frames: list[tuple[int, int]], state: dict[str, np.ndarray]) -> None:
        """Mark a chunk finished (its files are in place): its smoothing state, then its frames' timestamps."""
        if state:
            buffer = io.BytesIO()
            np.savez(buffer, **state)
            atomic_write(self.folder / f"{chunk:06d}.state.npz", lambda handle: handle.write(buffer.getvalue()))
        data = json.dumps(frames).encode()
        atomic_write(self.folder / f"{chunk:06d}.frames.json", lambda handle: handle.write(data))
        (self.folder / f"{chunk - 1:06d}.state.npz").unlink(missing_ok=True)  # only the last one is needed

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
