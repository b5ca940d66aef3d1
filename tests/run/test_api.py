"""The docs' Python page: each Python example writes byte for byte the files of the command above it.

The examples are read from docs/python.md itself, so the page and this test cannot drift apart.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipseg_cli.cli import main
from clipseg_cli.constants import DEFAULT_MODEL

PAGE = Path(__file__).resolve().parents[2] / "docs" / "python.md"
INPUTS = ("photo.jpg", "street.jpg", "car.jpg", "car.mask.png", "photos/a.jpg", "photos/b.png")


def python_section() -> str:
    return PAGE.read_text(encoding="utf-8")


def example_pairs() -> list[tuple[str, str]]:
    """(command, Python code) for each ```bash block of the Python section and the ```python block after it."""
    blocks = re.findall(r"```(bash|python)\n(.*?)```", python_section(), flags=re.DOTALL)
    pairs = []
    for (lang, code), (next_lang, next_code) in pairwise(blocks):
        if lang == "bash" and next_lang == "python":
            pairs.append((code.strip(), next_code))
    return pairs


def make_inputs(folder: Path) -> None:
    """The images the examples name: random pixels, and a mask marking an object in car.jpg."""
    rng = np.random.default_rng(7)
    for i, name in enumerate(INPUTS):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".mask.png"):
            mask = np.zeros((48, 72), dtype=np.uint8)
            mask[10:30, 20:50] = 255
            Image.fromarray(mask).save(path)
        else:
            size = (72, 48) if name == "car.jpg" else (64 + 8 * i, 40 + 4 * i)
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def outputs(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` that is not an input, by relative path."""
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file() and path.relative_to(folder).as_posix() not in INPUTS}


def test_the_page_shows_the_three_kinds_of_run() -> None:
    commands = [command for command, _ in example_pairs()]
    assert len(commands) == 3, commands
    assert "--template" in commands[0]
    assert "--prompt-mask" in commands[1]
    assert "--union" in commands[2] and "-n " in commands[2]


def test_each_python_example_writes_the_files_of_its_command(
    tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    originals = tmp_path / "inputs"
    make_inputs(originals)
    namespace: dict[str, object] = {}  # the examples build on each other, as in a notebook
    for index, (command, code) in enumerate(example_pairs()):
        cli_dir, python_dir = tmp_path / f"cli-{index}", tmp_path / f"python-{index}"
        shutil.copytree(originals, cli_dir)
        shutil.copytree(originals, python_dir)

        monkeypatch.chdir(cli_dir)
        args = shlex.split(command)
        assert args[0] == "clipseg"
        with contextlib.redirect_stderr(io.StringIO()) as stderr:
            assert main([*args[1:], "--weights", str(checkpoint), "--quiet"]) == 0, stderr.getvalue()

        monkeypatch.chdir(python_dir)
        assert f'"{DEFAULT_MODEL}"' in code or index > 0
        with contextlib.redirect_stdout(io.StringIO()):
            exec(code.replace(f'"{DEFAULT_MODEL}"', repr(str(checkpoint))), namespace)

        written, expected = outputs(python_dir), outputs(cli_dir)
        assert expected, f"{command}: wrote nothing"
        assert sorted(written) == sorted(expected), command
        for name, content in expected.items():
            assert written[name] == content, f"{command}: {name} differs from the Python example's"
            if name.endswith(".mask.png"):  # on the tiny model too, each example shows a real mask
                values = set(np.unique(np.asarray(Image.open(io.BytesIO(content)))))
                assert values == {0, 255}, f"{command}: {name} is all {values}; pick prompts the fixture tells apart"


def test_every_public_name_resolves() -> None:
    import clipseg_cli

    missing = [name for name in clipseg_cli.__all__ if getattr(clipseg_cli, name, None) is None]
    assert not missing, f"clipseg_cli.__all__ names what it cannot give: {missing}"


PUBLIC = ["ClipSegError", "Job", "ModelSpec", "OutputPlan", "Pipeline", "PostProcess", "Segmenter", "TrainOptions",
          "__version__", "evaluate", "load_model", "make_mask", "refine_map", "train", "visual_prompt"]


def test_the_public_api_is_pinned() -> None:
    # a name added to or dropped from the package's face is a decision: change PUBLIC with it, and the docs
    import clipseg_cli

    assert sorted(clipseg_cli.__all__) == PUBLIC


@pytest.mark.slow
def test_importing_the_package_changes_no_environment_variable_and_prints_nothing() -> None:
    # OpenCV's own import sets LD_LIBRARY_PATH (cv2/__init__.py, for its bundled libraries): not ours to change
    probe = ("import os, sys; before = dict(os.environ); import clipseg_cli; same = dict(os.environ) == before; "
             "[getattr(clipseg_cli, name) for name in clipseg_cli.__all__]; os.environ.pop('LD_LIBRARY_PATH', None); "
             "before.pop('LD_LIBRARY_PATH', None); sys.exit(0 if same and dict(os.environ) == before else 3)")
    env = {**os.environ, "HF_HOME": "", "XDG_CACHE_HOME": "", "PYTHONPATH": str(Path(clipseg_cli_src()))}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def clipseg_cli_src() -> str:
    import clipseg_cli

    return str(Path(clipseg_cli.__file__).parents[1])
