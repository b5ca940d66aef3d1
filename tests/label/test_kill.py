"""A labelling run killed by a signal resumes where it stopped, into the bytes of an uninterrupted run."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from helpers import default_signals, noise, read_all, save, subprocess_env
from label.conftest import MASK_OPTIONS
from label.test_runs import dataset_files, summary

pytestmark = [pytest.mark.usefixtures("offline"), pytest.mark.slow]
PIPE_BYTES = 4096


def test_a_killed_run_resumes_into_the_bytes_of_an_uninterrupted_one(tmp_path: Path, weights: list[str],
                                                                     run_label) -> None:
    folder = tmp_path / "photos"
    for index in range(60):  # a good image, then a broken one: each broken one is a line on stderr
        save(noise((40, 32), seed=index), folder / f"{index:03d}a.png")
        (folder / f"{index:03d}b.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    args = ["label", folder, "-o", tmp_path / "killed", "-p", "tree", *weights, *MASK_OPTIONS]
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_BYTES)  # the run waits once its error lines fill it
    process = subprocess.Popen([sys.executable, "-m", "clipseg_cli", *map(str, args)], env=subprocess_env(),
                               stdout=subprocess.DEVNULL, stderr=write_end, preexec_fn=default_signals)
    os.close(write_end)
    deadline, unread = time.monotonic() + 300, bytearray(4)
    while True:  # held: the run waits to print its next error line
        fcntl.ioctl(read_end, termios.FIONREAD, unread)
        if int.from_bytes(unread, sys.byteorder) > PIPE_BYTES - 512:
            break
        assert process.poll() is None, "the run ended before its stderr pipe was full"
        assert time.monotonic() < deadline, "the run did not fill its stderr pipe in time"
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    reader, chunks = read_all(read_end)
    assert process.wait(timeout=300) == 128 + signal.SIGTERM
    reader.join()
    assert "stopped by SIGTERM" in chunks[0].decode()
    assert not list((tmp_path / "killed").rglob("*.clipseg-tmp"))
    assert not (tmp_path / "killed" / "annotations").exists()  # the index files come at the end
    resumed = run_label(folder, tmp_path / "killed", "-p", "tree")
    whole = run_label(folder, tmp_path / "whole", "-p", "tree")
    assert resumed.code == whole.code == 1  # the broken images fail in both
    labelled, up_to_date = (int(word) for word in summary(resumed.stderr).split()[1:6:3])
    assert labelled + up_to_date == 60 and labelled > 0 and up_to_date > 10
    assert dataset_files(tmp_path / "killed") == dataset_files(tmp_path / "whole")
