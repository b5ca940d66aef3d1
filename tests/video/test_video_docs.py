"""docs/video.md runs: its shell examples (marked not run for the docs' own runner, which has no video files) and its
Python example run here, as a user runs them, with clips of their own and a fake Hub serving the default weights."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from video_clips import make_clip

from hub_server import FakeHub

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "video.md"
OURS = "tests/video/test_video_docs.py runs"
CLIPS = ["clip.mp4", "shots/a.mp4", "shots/sub/b.mkv"]


def blocks(kind: str) -> list[str]:
    """The page's ```bash blocks marked as run here, or its ```python blocks."""
    text = PAGE.read_text(encoding="utf-8")
    if kind == "python":
        return re.findall(r"^```python\n(.*?)^```$", text, flags=re.DOTALL | re.MULTILINE)
    return re.findall(r"<!-- not run:[^>]*" + re.escape(OURS) + r"[^>]*-->\n```bash\n(.*?)^```$", text,
                      flags=re.DOTALL | re.MULTILINE)


def test_the_pages_examples_run(tmp_path: Path, checkpoint: Path):
    assert blocks("bash") and blocks("python")
    sandbox = tmp_path / "user"
    for name in CLIPS:
        (sandbox / name).parent.mkdir(parents=True, exist_ok=True)
        make_clip(sandbox / name, frames=4)
    with FakeHub() as hub:
        hub.add_revision("CIDAS/clipseg-rd64-refined", "main", checkpoint)
        env = {key: value for key, value in os.environ.items() if key not in {"HF_HUB_OFFLINE", "CLIPSEG_DEBUG"}}
        env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
                   PYTHONPATH=str(ROOT / "src"), HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf"),
                   CLIPSEG_CACHE=str(tmp_path / "cache"), HF_HUB_DISABLE_TELEMETRY="1")
        for code in blocks("bash"):
            done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", code], cwd=sandbox, env=env,
                                  capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, f"{code}\n{done.stderr[-3000:]}"
            promised = re.findall(r"[\w./-]+\.(?:mkv|mp4|mov|webm|png)\b", " ".join(re.findall(r"#.*", code)))
            assert promised and [name for name in promised if not (sandbox / name).is_file()] == []
        for code in blocks("python"):
            done = subprocess.run([sys.executable, "-c", code], cwd=sandbox, env=env, capture_output=True, text=True,
                                  timeout=600)
            assert done.returncode == 0, f"{code}\n{done.stderr[-3000:]}"
            assert done.stdout.splitlines()[-1].startswith("ok ")
