"""The routes of serve/pages.py, in process (no model is loaded): what ``/`` and ``/docs`` serve.

The pages in a browser are tests/serve/test_page.py's.
"""

from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("fastapi", reason="the serve extra's")
testclient = pytest.importorskip("starlette.testclient", reason="needs the dev extra's httpx")


@pytest.fixture
def client():
    from clipseg_cli.serve.app import create_app

    return testclient.TestClient(create_app(lambda: pytest.fail("no route here needs the model")))


def test_the_page_is_given_the_cli_palette_and_threshold(client):
    from clipseg_cli.constants import DEFAULT_THRESHOLD
    from clipseg_cli.imaging.writing import PALETTE

    html = client.get("/").text
    settings = json.loads(re.search(r'<script id="settings" type="application/json">(.*?)</script>', html)[1])
    assert settings == {"palette": [list(color) for color in PALETTE], "threshold": DEFAULT_THRESHOLD}
    assert "{{" not in html
    script = client.get("/page/page.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert "230, 159" not in script.text and "[230" not in script.text  # the colours are not copied into the page


def test_docs_load_swagger_ui_from_this_server(client):
    html = client.get("/docs").text
    sources = re.findall(r'(?:src|href)="([^"]+)"', html) + re.findall(r"url: '([^']+)'", html)
    assert sources and all(source.startswith("/") for source in sources), sources
    for source in sources:
        answer = client.get(source)
        assert answer.status_code == 200 and len(answer.content) > 100, source
    assert client.get("/redoc").status_code == 404  # ReDoc would come from a CDN: not offered


@pytest.mark.parametrize("path", ["/page/..%2Fapp.py", "/page/nothing.js", "/docs/assets/..%2F__init__.py",
                                  "/docs/assets/index.html"])
def test_only_the_pages_own_files_are_served(client, path):
    answer = client.get(path)
    assert answer.status_code == 404 and answer.json()["error"]
