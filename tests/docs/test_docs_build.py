"""The MkDocs site builds with ``--strict`` (a broken link, anchor or nav entry fails), and the links of
README.md and CONTRIBUTING.md into docs/ land on a page and a heading that exist."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS_LINK = re.compile(r"\]\((docs/[^)#\s]+)(?:#([^)\s]+))?\)")


def build(site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})  # no banner about MkDocs 2


def page_html(site: Path, target: str) -> Path:
    """The built page of ``docs/X.md`` (MkDocs' directory URLs: X/index.html, index.md at the root)."""
    stem = Path(target).relative_to("docs").with_suffix("")
    return site / "index.html" if stem.as_posix() == "index" else site / stem / "index.html"


@pytest.mark.slow
def test_the_site_builds_strictly_and_the_readme_links_into_it(tmp_path: Path) -> None:
    site = tmp_path / "site"
    done = build(site)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (site / "command-line" / "index.html").is_file() and (site / "images" / "overlay.png").is_file()
    assert not (site / "make_pictures.py").exists()  # the pictures' script stays out of the site
    broken = []
    for name in ("README.md", "CONTRIBUTING.md"):
        for target, anchor in DOCS_LINK.findall((ROOT / name).read_text(encoding="utf-8")):
            if target.endswith(".md"):
                html = page_html(site, target)
                if not html.is_file() or (anchor and f'id="{anchor}"' not in html.read_text(encoding="utf-8")):
                    broken.append(f"{name}: {target}#{anchor}")
            elif not (ROOT / target).is_file():
                broken.append(f"{name}: {target}")
    assert broken == []


def test_the_readme_is_a_short_start_whose_first_block_is_the_set_up() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200  # the reference lives in docs/
    first = text.split("```bash\n", 1)[1].split("```", 1)[0]
    assert [line.split("  #")[0].strip() for line in first.splitlines()] == [
        'python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 && .venv/bin/pip install -e ".[dev]"',
        ".venv/bin/python -m pytest"]  # what .ci/run runs, and checks that the README says
    assert text.index("```bash") < text.index("## Quick start")
