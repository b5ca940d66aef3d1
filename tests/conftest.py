"""Shared pytest fixtures, one section per helper."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hub_server import FakeHub

# ---- Fake Hugging Face Hub (tests/hub_server.py) ------------------------------------------------


@pytest.fixture
def hub_server() -> Iterator[FakeHub]:
    """A FakeHub listening on 127.0.0.1 (``hub_server.url``), stopped after the test."""
    with FakeHub() as hub:
        yield hub


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reaches the network or the user's Hugging Face cache (modules opt in with pytestmark)."""
    from huggingface_hub import constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("CLIPSEG_DEBUG", raising=False)


# ---- Tiny random checkpoint (tests/factory.py) --------------------------------------------------


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A "complex" CLIPSeg checkpoint folder (64x64 model input), built once per session."""
    from factory import assert_prompts_differ, build_checkpoint

    directory = build_checkpoint(tmp_path_factory.mktemp("checkpoint"), "complex")
    assert_prompts_differ(directory)
    return directory


@pytest.fixture
def weights(checkpoint: Path) -> list[str]:
    """The command-line arguments that load the tiny checkpoint."""
    return ["--weights", str(checkpoint)]


# ---- ONNX graph cache (src/clipseg_cli/backends/cache.py) ---------------------------------------


@pytest.fixture(scope="session", autouse=True)
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Graphs exported during the tests go to a session folder (subprocesses inherit it), never the user's cache."""
    import os

    folder = tmp_path_factory.mktemp("clipseg-cache")
    previous = os.environ.get("CLIPSEG_CACHE")
    os.environ["CLIPSEG_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("CLIPSEG_CACHE", None)
    else:
        os.environ["CLIPSEG_CACHE"] = previous


@pytest.fixture
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache of this test's own: the session's entries are keyed by content, so tests that build the same
    checkpoint share them (and another test's live segmenter may hold one)."""
    folder = tmp_path / "clipseg-cache"
    monkeypatch.setenv("CLIPSEG_CACHE", str(folder))
    return folder
