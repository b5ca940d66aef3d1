"""``clipseg batch --ray`` as a user runs it, in a process of its own with its own local Ray: an actor killed
mid-task is replaced, stdout carries our JSON lines only and stderr our lines only; the local Ray listens on
loopback only.

The work is held by a FIFO at one of the outputs: the actor that checks that output's fingerprint waits on it
until the test opens it, so the test knows which actor is mid-task and kills it there.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers import SHARD_PROMPTS, files, is_loopback, listening_sockets, make_folder, run_batch, subprocess_env


def open_for_writing(fifo: Path, process: subprocess.Popen, timeout: float = 300) -> int:
    """Open a FIFO's write end once a reader waits on it (an actor mid-task).

    Returns:
        The file descriptor.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
        assert process.poll() is None, "the run ended before an actor read the held output"
        assert time.monotonic() < deadline, "no actor read the held output in time"
        time.sleep(0.02)


def reader_of(fifo: Path, timeout: float = 60) -> int:
    """Returns: the process id of the other process that holds ``fifo`` open (its reader)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            if int(pid) == os.getpid():
                continue
            try:
                if any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(fifo) for fd in os.listdir(f"/proc/{pid}/fd")):
                    return int(pid)
            except OSError:
                continue
        time.sleep(0.02)
    raise AssertionError(f"nobody reads {fifo}")


def serve_empty(fifo: Path, process: subprocess.Popen) -> None:
    """Let each later reader of ``fifo`` read nothing (an output of another tool: it is rewritten), until the
    output is a file again or the run ends."""
    while process.poll() is None and fifo.exists() and not fifo.is_file():
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc to find the actor")
@pytest.mark.parametrize("quiet", [False, True])
def test_an_actor_killed_mid_task_is_replaced_and_stdout_holds_json_only(quiet: bool, checkpoint: Path,
                                                                        tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    expected = tmp_path / "plain"
    assert run_batch(folder, expected, checkpoint).code == 1
    out = (tmp_path / "ray").absolute()
    out.mkdir()
    held = out / "c.car.mask.png"
    os.mkfifo(held)
    command = [sys.executable, "-m", "clipseg_cli", "batch", str(folder), "-r", *SHARD_PROMPTS, "-o", str(out),
               "--weights", str(checkpoint), "--precision", "fp32", "--json", "--ray", "--ray-actors", "2",
               "--batch-size", "1", *(["-q"] if quiet else [])]
    process = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        writer = open_for_writing(held, process)
        found = listening_sockets(process.pid)  # the local Ray it started, mid-run
        assert {"gcs_server", "raylet"} <= {name for *_, name in found}
        assert [entry for entry in found if not is_loopback(entry[0])] == []
        os.kill(reader_of(held), signal.SIGKILL)  # the actor, waiting in the middle of its chunk
        os.close(writer)
        threading.Thread(target=serve_empty, args=(held, process), daemon=True).start()
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1  # broken.jpg
    records = [json.loads(line) for line in stdout.decode().splitlines()]  # every line is one of ours
    assert all(isinstance(record, dict) and "image" in record for record in records)
    assert len(records) == 8 * 2
    assert files(out) == files(expected)
    lines = stderr.decode().splitlines()
    ours = [line for line in lines if line.startswith(("error: ", "clipseg: "))]
    assert lines == ours, stderr.decode()  # nothing of Ray's
    assert [line for line in lines if line.startswith("error: ")] == \
        [f"error: {folder / 'sub' / 'broken.jpg'}: not an image file (cannot identify format)"]
    replaced = [line for line in lines if "Ray lost an actor" in line]
    assert len(replaced) == (0 if quiet else 1)
