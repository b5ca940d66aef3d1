"""The two pages of ``clipseg serve``: the web page at ``/`` and the API page at ``/docs``, both from files
shipped in wheels (no CDN), so they work where the server runs, offline included.

- ``/`` is page/index.html with the CLI's overlay colours (`PALETTE`) and default threshold written in, so
  that the page colours and cuts each prompt as ``clipseg segment`` does; its script and style are
  ``/page/{name}``.
- ``/docs`` is FastAPI's Swagger UI page, its script and style served from the fastapi-offline wheel at
  ``/docs/assets/{name}`` (Swagger UI 5: it renders the OpenAPI 3.1 that FastAPI writes).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response

from clipseg_cli.constants import DEFAULT_THRESHOLD
from clipseg_cli.imaging.writing import PALETTE

PAGE = Path(__file__).parent / "page"
SETTINGS_SLOT = "{{settings}}"  # in index.html: replaced by `settings()` as JSON
DOCS_ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")
MEDIA_TYPES = {"js": "text/javascript", "css": "text/css", "png": "image/png", "html": "text/html; charset=utf-8"}


def add_pages(api: FastAPI) -> None:
    """Add ``/``, ``/page/{name}``, ``/docs`` and ``/docs/assets/{name}`` to the app (made with ``docs_url=None``)."""

    @api.get("/", include_in_schema=False)
    async def index() -> Response:
        html = (PAGE / "index.html").read_text(encoding="utf-8")
        return HTMLResponse(html.replace(SETTINGS_SLOT, json.dumps(settings())))

    @api.get("/page/{name}", include_in_schema=False)
    async def page_file(name: str) -> Response:
        files = {path.name: path for path in PAGE.iterdir()}  # only the page's own files, never a path
        if name not in files:
            return _missing(f"no page file {name!r}")
        return Response(files[name].read_bytes(), media_type=_media_type(name))

    @api.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> Response:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(openapi_url=f"{root}{api.openapi_url}", title=f"{api.title}: API",
                                   swagger_js_url=f"{root}/docs/assets/swagger-ui-bundle.js",
                                   swagger_css_url=f"{root}/docs/assets/swagger-ui.css",
                                   swagger_favicon_url=f"{root}/docs/assets/favicon.png")

    @api.get("/docs/assets/{name}", include_in_schema=False)
    async def docs_asset(name: str) -> Response:
        if name not in DOCS_ASSETS:
            return _missing(f"no docs file {name!r}")
        try:
            data = (resources.files("fastapi_offline") / "static" / name).read_bytes()
        except (ModuleNotFoundError, FileNotFoundError):
            return _missing("the API page's files are not installed: pip install 'clipseg-cli[serve]' "
                            "(fastapi-offline)")
        return Response(data, media_type=_media_type(name), headers={"Cache-Control": "max-age=86400"})


def settings() -> dict[str, object]:
    """Returns: what the page takes from the CLI: ``{"palette": [[R, G, B], ...], "threshold": 0.4}``."""
    return {"palette": [list(color) for color in PALETTE], "threshold": DEFAULT_THRESHOLD}


def _media_type(name: str) -> str:
    return MEDIA_TYPES.get(name.rpartition(".")[2], "application/octet-stream")


def _missing(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, 404)
