"""Every shell example of README.md and docs/*.md runs as a user would run it, so the docs cannot rot.

Each ```bash block is run once, in one bash (``set -e -o pipefail``), in the order of its page, in a
sandbox of that page: a copy of examples/ and the stand-ins below (the photos, folders and files the
examples name that a user brings). ``clipseg`` is the console script of the venv running pytest, on this
checkout's source (PYTHONPATH); the Hub is a FakeHub serving tiny checkpoints under the published names,
so ``clipseg download-weights`` and a first run that downloads work as they do for a user. Every line
must succeed, and a file that a line's comment promises (``# out/chelsea.cat.mask.png``; ``<hash>``
stands for any hash) must exist after its block.

A block that cannot run here (a GPU, a cluster, a server that runs until stopped, a benchmark) has a
comment line right above its fence that says why: ``<!-- not run: needs a Ray cluster -->``. The
README's first block is the set-up, which .ci/run runs. A new page, or a new example that names a file
of its own, is picked up as it is; add what it names to STAND_INS. The README's ```python block (the
API in ten lines) runs too, after its shell examples (docs/python.md's are run by tests/test_api.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hub_server import FakeHub

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN = re.compile(r"^<!--\s*not run:(?P<reason>.*?)-->\s*$")
PROMISED = re.compile(r"(?<![\w{}./*<>-])[\w./*<>-]+\.(?:png|jsonl|json|csv)\b")
BLOCK_TIMEOUT_S = 900  # a whole page's block on a busy 2-core machine, downloads and exports included
TOOLS = {"jq": re.compile(r"\|\s*jq\b")}  # tools outside Python that examples pipe into, by how a block uses them


@dataclass(frozen=True)
class Block:
    """One ```bash block: where it is, its code, and why it is not run (None: it is run)."""

    page: Path
    line: int  # of the opening fence, 1-based
    code: str
    not_run: str | None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The ```bash blocks of a page, each with the reason of the ``<!-- not run: ... -->`` line above it."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found, index = [], 0
    while index < len(lines):
        if lines[index].strip() == "```bash":
            end = next((i for i in range(index + 1, len(lines)) if lines[i].strip() == "```"), None)
            assert end is not None, f"{page.relative_to(ROOT)}:{index + 1}: a ```bash block that never ends"
            above = NOT_RUN.match(lines[index - 1].strip()) if index else None
            found.append(Block(page, index + 1, "\n".join(lines[index + 1 : end]) + "\n",
                               above["reason"].strip() if above else None))
            index = end
        index += 1
    if page.name == "README.md" and found:  # the set-up: .ci/run runs it (and checks it is these commands)
        found[0] = Block(page, found[0].line, found[0].code, "the set-up, which .ci/run runs")
    return found


def run_blocks(page: Path) -> list[Block]:
    return [block for block in blocks(page) if block.not_run is None]


def python_blocks(page: Path) -> list[str]:
    """The ```python blocks of a page that this test runs: the README's."""
    text = page.read_text(encoding="utf-8") if page.name == "README.md" else ""
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.DOTALL | re.MULTILINE)


def test_every_example_that_is_not_run_says_why() -> None:
    every = [block for page in PAGES for block in blocks(page)]
    assert [block for block in every if block.not_run == ""] == [], "a <!-- not run: --> line without a reason"
    markers = [(page, number) for page in PAGES
               for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
               if "not run" in line and line.lstrip().startswith("<!--")]
    marked = {(block.page, block.line - 1) for block in every if block.not_run}
    assert [(p.name, n) for p, n in markers if (p, n) not in marked] == [], "a not-run line right above no ```bash"
    assert sum(1 for block in every if block.not_run is None) >= 10  # the docs mostly show what runs


# ---- the sandbox: what a user has --------------------------------------------------------------------------------


def photo(path: Path, size: tuple[int, int], seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def object_mask(path: Path, size: tuple[int, int]) -> None:
    mask = np.zeros((size[1], size[0]), np.uint8)
    mask[size[1] // 4 : 3 * size[1] // 4, size[0] // 4 : 3 * size[0] // 4] = 255
    Image.fromarray(mask).save(path)


SIZE = (96, 64)
# What the examples name that a user brings; examples/ is copied as it is.
STAND_INS: dict[str, Callable[[Path], None]] = {
    **{name: (lambda path, seed=seed: photo(path, SIZE, seed)) for seed, name in enumerate([
        "photo.jpg", "street.jpg", "car.jpg", "ref1.jpg", "ref2.jpg",
        "shoot/a.jpg", "shoot/b.jpg", "shoot/e.jpg", "shoot/sub/c.jpg", "shoot/sub/d.jpg",  # shards 0/2 and 1/2 both
        "shots/a.jpg", "shots/b.jpg", "photos/a.jpg", "photos/b.png", "new/a.jpg", "incoming/a.jpg"])},
    **{name: (lambda path: object_mask(path, SIZE)) for name in ["car.mask.png", "ref1.mask.png", "ref2.mask.png"]},
    "prompts.txt": lambda path: path.write_text("car\n# a comment line\n\ndog\n", encoding="utf-8"),
}


def make_sandbox(folder: Path) -> Path:
    shutil.copytree(ROOT / "examples", folder / "examples")
    for name, make in STAND_INS.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        make(folder / name)
    return folder


@pytest.fixture(scope="module")
def published_hub(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path) -> Iterator[FakeHub]:
    """A FakeHub serving tiny checkpoints under the published names (and a tiny SAM for --refine sam)."""
    from factory import build_checkpoint, build_sam_checkpoint

    folders = {
        "CIDAS/clipseg-rd64-refined": checkpoint,
        "CIDAS/clipseg-rd64": build_checkpoint(tmp_path_factory.mktemp("rd64"), "plain"),
        "CIDAS/clipseg-rd16": build_checkpoint(tmp_path_factory.mktemp("rd16"), "rd16"),
        "nielsr/slimsam-50-uniform": build_sam_checkpoint(tmp_path_factory.mktemp("slimsam")),
    }
    with FakeHub() as hub:
        for repo, folder in folders.items():
            hub.add_revision(repo, "main", folder)
        yield hub


def user_environment(home: Path, hub: FakeHub, cache: Path) -> dict[str, str]:
    """A shell as a user has it: the venv's clipseg first on PATH (on this checkout's source), online to the hub."""
    given = [str(Path(p).resolve()) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {key: value for key, value in os.environ.items()
           if key not in {"HF_HUB_OFFLINE", "HF_HUB_CACHE", "CLIPSEG_DEBUG", "HF_TOKEN"}}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), *given]),
               HF_ENDPOINT=hub.url, HF_HOME=str(home / ".hf"), HF_HUB_DISABLE_TELEMETRY="1", CLIPSEG_CACHE=str(cache),
               MPLCONFIGDIR=str(home / ".matplotlib"), PYTHONIOENCODING="utf-8", COLUMNS="100")
    return env


def promised_files(code: str) -> list[str]:
    """The files the comments of a block name, e.g. ``# out/chelsea.cat.mask.png`` (as glob patterns)."""
    found = []
    for line in code.splitlines():
        comment = re.search(r"(?:^|\s)#\s(.*)$", line)
        if comment:
            found += [name.replace("<hash>", "*") for name in PROMISED.findall(comment[1])]
    return found


@pytest.mark.slow
@pytest.mark.parametrize("page", [page for page in PAGES if run_blocks(page)], ids=lambda page: page.name)
def test_the_examples_of_a_page_run(page: Path, published_hub: FakeHub, tmp_path: Path,
                                    tmp_path_factory: pytest.TempPathFactory) -> None:
    sandbox = make_sandbox(tmp_path / "user")
    env = user_environment(tmp_path, published_hub, tmp_path_factory.getbasetemp() / "docs-clipseg-cache")
    assert shutil.which("clipseg", path=env["PATH"]) == str(Path(sys.executable).parent / "clipseg")
    lacking = []
    for block in run_blocks(page):
        tools = [tool for tool, used in TOOLS.items() if used.search(block.code) and not shutil.which(tool)]
        if tools:  # not the docs' fault: the rest of the page still runs, and the test says what it left out
            lacking.append(f"{block.where} needs {', '.join(tools)}")
            continue
        script = tmp_path / "example.sh"
        script.write_text('trap \'echo "example failed (exit $?): $BASH_COMMAND" >&2\' ERR\n' + block.code,
                          encoding="utf-8")
        done = subprocess.run(["bash", "-e", "-o", "pipefail", str(script)], cwd=sandbox, env=env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
        assert done.returncode == 0, f"{block.where}:\n{block.code}\nstdout: {done.stdout[-3000:]}\n" \
                                     f"stderr: {done.stderr[-3000:]}"
        missing = [name for name in promised_files(block.code) if not list(sandbox.glob(name))]
        assert missing == [], f"{block.where}: its comments promise {missing}, which the example did not write"
    for code in python_blocks(page):
        done = subprocess.run([sys.executable, "-c", code], cwd=sandbox, env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
        assert done.returncode == 0, f"{page.name}'s Python:\n{code}\nstderr: {done.stderr[-3000:]}"
        assert done.stdout.startswith(("ok ", "skipped ")), done.stdout  # one line per result: status, mask, stats
    if lacking:
        pytest.skip(f"every other example ran; not installed here: {'; '.join(lacking)}")
