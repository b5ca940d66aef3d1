"""Shared pytest fixtures, one section per helper."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hub_server import FakeHub

# ---- Fake Hugging Face Hub (tests/hub_server.py) ------------------------------------------------


@pytest.fixture
def hub_server() -> Iterator[FakeHub]:
    """A FakeHub listening on 127.0.0.1 (``hub_server.url``), stopped after the test."""
    with FakeHub() as hub:
        yield hub
