"""A real ``clipseg video`` process stopped by SIGTERM or Ctrl-C mid-video: no output file, whole or half, and no
temporary file is left; the rerun resumes from the last finished chunk and completes the video."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from video_clips import decoded_frames, make_clip

from helpers import subprocess_env

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stopped_run_leaves_no_partial_file_and_the_rerun_resumes(tmp_path: Path, checkpoint: Path, signum: int,
                                                                    code: int):
    frames = 240
    clip = make_clip(tmp_path / "long.mp4", frames=frames)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "clipseg_cli", "video", str(clip), "-p", "square", "-o", str(out), "--cutout",
               "--chunk-frames", "4", "--batch-size", "2", "--weights", str(checkpoint)]
    process = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    marker = out / ".long.clipseg-video" / "000001.frames.json"
    while not marker.exists():  # two chunks of 60 are done: the run is well inside the video
        assert process.poll() is None, process.communicate()[1].decode()
        time.sleep(0.01)
    process.send_signal(signum)
    stderr = process.communicate(timeout=300)[1].decode()
    assert process.returncode == code, stderr
    assert "Traceback" not in stderr
    assert not [p for p in out.iterdir() if not p.name.startswith(".")]  # no output file
    work = out / ".long.clipseg-video"
    assert not [p for p in work.iterdir() if p.name.startswith(".")]  # no chunk half written
    done = len(list(work.glob("*.frames.json")))
    assert 2 <= done < frames // 4

    again = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert len(decoded_frames(out / "long.square.mask.mkv", "gray")) == frames
    assert len(decoded_frames(out / "long.square.cutout.mov", "rgba")) == frames
    assert sorted(p.name for p in out.iterdir()) == ["long.square.cutout.mov", "long.square.mask.mkv",
                                                     "long.square.overlay.mp4"]
