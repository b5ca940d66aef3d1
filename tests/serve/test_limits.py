"""The server's answers to careless and hostile requests, in process (Starlette's TestClient runs the whole ASGI app,
CORS and guard included, with the tiny checkpoint loaded once): CORS preflights, tokens no client can send, values
out of range, prompts that are not UTF-8, Accept's q-values, and /metrics counting every answer."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest

from helpers import clipseg, noise, subprocess_env
from helpers_serve import AUTH, TOKEN

pytest.importorskip("fastapi", reason="clipseg serve needs the serve extra")
from starlette.testclient import TestClient

from clipseg_cli.errors import ClipSegError
from clipseg_cli.serve.app import ServeConfig, create_app
from clipseg_cli.serve.forms import accepted
from clipseg_cli.serve.guard import Guard
from clipseg_cli.serve.library import Loaded

pytestmark = pytest.mark.usefixtures("offline")
ALLOWED = "http://allowed.example"


@pytest.fixture(scope="module")
def loaded(checkpoint: Path) -> Loaded:
    from clipseg_cli.predictor import ModelSpec

    return Loaded(ModelSpec(checkpoint, "cpu", "fp32").load(progress=False))


def serving(loaded: Loaded, **limits: object) -> TestClient:
    config = ServeConfig(token=TOKEN, cors=(ALLOWED,), max_upload_mb=1, **limits)
    return TestClient(create_app(lambda: loaded, config), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(loaded: Loaded) -> Iterator[TestClient]:
    with serving(loaded) as client:
        yield client


@pytest.fixture(scope="module")
def image() -> bytes:
    out = BytesIO()
    noise((48, 32), seed=3).save(out, "PNG")
    return out.getvalue()


def segment(client: TestClient, image: bytes, *prompts: str, headers: dict | None = None, **fields: object):
    data = {"prompt": list(prompts), **{key: str(value) for key, value in fields.items()}}
    return client.post("/v1/segment", files={"image": ("photo.png", image)}, data=data,
                       headers={**AUTH, **(headers or {})})


def metric(client: TestClient, status: int) -> float:
    name = f'clipseg_requests_total{{status="{status}"}} '
    lines = client.get("/metrics", headers=AUTH).text.splitlines()
    return next((float(line.split()[-1]) for line in lines if line.startswith(name)), 0.0)


# ---- CORS with a token (issue 30 item 2) ---------------------------------------------------------------


def test_a_preflight_of_an_allowed_origin_is_answered_and_the_call_still_needs_the_token(client, image):
    preflight = {"Origin": ALLOWED, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization"}
    answer = client.options("/v1/segment", headers=preflight)
    assert answer.status_code == 200, answer.text
    assert answer.headers["access-control-allow-origin"] == ALLOWED
    assert "authorization" in answer.headers["access-control-allow-headers"].lower()
    refused = client.post("/v1/segment", files={"image": ("a.png", image)}, data={"prompt": "car"},
                          headers={"Origin": ALLOWED})
    assert refused.status_code == 401  # the token still guards the call ...
    assert refused.headers["access-control-allow-origin"] == ALLOWED  # ... and the page can read why
    called = segment(client, image, "car", headers={"Origin": ALLOWED})
    assert called.status_code == 200 and called.headers["access-control-allow-origin"] == ALLOWED
    other = client.options("/v1/segment", headers={**preflight, "Origin": "http://elsewhere.example"})
    assert other.status_code != 200 and "access-control-allow-origin" not in other.headers


# ---- tokens no client can send (item 3) ------------------------------------------------------------------


@pytest.mark.parametrize("token", [" ", "\t", "   ", " padded", "padded ", "tök\u00e9n", "line\nbreak"])
def test_a_token_no_client_can_send_is_refused_in_one_line(token, tmp_path, monkeypatch):
    monkeypatch.delenv("CLIPSEG_TOKEN", raising=False)
    outcome = clipseg("serve", "--token", token, "--weights", tmp_path / "none")  # refused before any model loads
    assert outcome.code == 2 and len(outcome.errors()) == 1 and "Traceback" not in outcome.stderr
    assert "--token" in outcome.errors()[0]
    with pytest.raises(ClipSegError, match="token"):
        Guard(lambda *_: None, token=token, max_bytes=1)


# ---- values out of range, not UTF-8 (items 14, 17) --------------------------------------------------------


@pytest.mark.parametrize(("fields", "says"), [
    ({"blur": "inf"}, "blur"), ({"blur": "-inf"}, "blur"), ({"blur": "nan"}, "blur"), ({"blur": "1e999"}, "blur"),
    ({"threshold": "nan"}, "threshold"), ({"threshold": "0"}, "threshold"), ({"threshold": "inf"}, "threshold"),
    ({"dilate": "inf"}, "dilate"), ({"dilate": "1.5"}, "dilate"), ({"min_area": "nan"}, "min_area"),
    ({"erode": "-1"}, "erode"), ({"union": "maybe"}, "union"),
])
def test_values_out_of_range_are_422_in_one_line_without_a_traceback(client, image, fields, says, caplog):
    with caplog.at_level(logging.DEBUG):
        answer = segment(client, image, "car", **fields)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert says in error and "\n" not in error
    assert not [record for record in caplog.records if record.exc_info or record.levelno >= logging.ERROR]


def multipart(*parts: tuple[str, bytes, str | None]) -> tuple[bytes, dict[str, str]]:
    """A multipart body of raw bytes: (field, value, file name or None)."""
    body = b""
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--b\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"
    return body + b"--b--\r\n", {**AUTH, "Content-Type": "multipart/form-data; boundary=b"}


@pytest.mark.parametrize("field", ["prompt", "negative", "template"])
def test_a_field_that_is_not_utf8_is_422_and_utf8_latin_letters_are_taken(client, image, field):
    value = b"\xff\xfe car" if field != "template" else b"\xff a photo of {}"
    parts = [("image", image, "photo.png"), ("prompt", b"car", None)] if field != "prompt" else \
        [("image", image, "photo.png")]
    body, headers = multipart(*parts, (field, value, None))
    answer = client.post("/v1/segment", content=body, headers=headers)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == f"{field}: not UTF-8 text; send prompts and options as UTF-8"
    body, headers = multipart(("image", image, "photo.png"), ("prompt", "\u00ff\u00fe caf\u00e9".encode(), None))
    assert client.post("/v1/segment", content=body, headers=headers).status_code == 200  # the same letters, UTF-8


# ---- Accept's q-values (item 20) ----------------------------------------------------------------------------


@pytest.mark.parametrize(("accept", "kind"), [
    (None, "image/png"), ("*/*", "image/png"), ("image/png", "image/png"), ("image/*", "image/png"),
    ("application/json;q=0, image/png", "image/png"), ("application/json; q=0.0, */*", "image/png"),
    ("image/png;q=0.5, application/json", "application/json"), ("application/json", "application/json"),
    ("application/json, image/png", "application/json"), ("image/png;q=0, */*", "application/json"),
    ("IMAGE/PNG;Q=0.9, application/json;q=0.8", "image/png"),
])
def test_accept_q_values_choose_the_png_or_json(client, image, accept, kind):
    answer = segment(client, image, "car", headers={"Accept": accept} if accept else {})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == kind


def test_accept_taking_only_a_png_of_several_files_is_422(client, image):
    answer = segment(client, image, "car", overlay="true", headers={"Accept": "application/json;q=0, image/png"})
    assert answer.status_code == 422 and "Accept: image/png" in answer.json()["error"]


def test_accepted_reads_the_most_specific_range():
    assert accepted("image/*;q=0.3, */*;q=0.9, image/png;q=0.6", "image/png") == (0.6, True)
    assert accepted("image/*;q=0.3, */*;q=0.9", "image/png") == (0.3, False)
    assert accepted("text/html", "image/png") == (0.0, False)
    assert accepted("image/png;q=oops", "image/png") == (0.0, True)


# ---- /metrics counts every answer by status (item 18) -------------------------------------------------------


def test_metrics_count_every_answer_whoever_gives_it(client, image):
    before = {status: metric(client, status) for status in (200, 400, 401, 413, 422)}
    segment(client, image, "car")
    client.post("/v1/segment", files={"image": ("a.png", image)}, data={"prompt": "car"})  # no token: the guard
    client.post("/v1/segment", content=b"x" * (2 << 20), headers={**AUTH, "Content-Type": "multipart/form-data; "
                                                                   "boundary=b"})  # over 1 MB: the guard
    client.post("/v1/segment", content=b"--b\r\nnonsense", headers={**AUTH, "Content-Type": "multipart/form-data"})
    segment(client, image, "car", blur="inf")
    after = {status: metric(client, status) for status in before}
    assert {status: after[status] - before[status] for status in before} == {200: 1, 400: 1, 401: 1, 413: 1, 422: 1}


class _Broken:
    """The real segmenter, whose model call fails: the server's own 500."""

    def __init__(self, segmenter) -> None:
        self._segmenter = segmenter

    def __getattr__(self, name: str):
        return getattr(self._segmenter, name)

    def logits(self, *args, **kwargs):
        raise RuntimeError("the model broke")


def test_metrics_count_a_500(loaded, image):
    with serving(Loaded(_Broken(loaded.segmenter))) as broken:
        answer = segment(broken, image, "car")
        assert answer.status_code == 500 and answer.json()["error"] == "internal error: RuntimeError: the model broke"
        assert metric(broken, 500) == 1


# ---- set-up errors: one line, exit 2, before the model loads ----------------------------------------------


def test_other_hosts_need_a_token_or_no_auth(checkpoint, monkeypatch):
    monkeypatch.delenv("CLIPSEG_TOKEN", raising=False)
    outcome = clipseg("serve", "--host", "0.0.0.0", "--weights", checkpoint)
    assert outcome.code == 2
    assert outcome.errors() == ["error: --host 0.0.0.0 lets other machines in: give --token (or CLIPSEG_TOKEN), "
                                "or --no-auth to serve without one"]
    outcome = clipseg("serve", "--host", "0.0.0.0", "--no-auth", "--weights", "clipseg-tests/never-cached")
    assert "served without a token (--no-auth)" in outcome.stderr
    assert outcome.code == 2 and len(outcome.errors()) == 1 and "Traceback" not in outcome.stderr


def test_bad_weights_are_the_cli_one_line_error(tmp_path):
    outcome = clipseg("serve", "--weights", tmp_path / "nothing-here")
    assert outcome.code == 2 and len(outcome.errors()) == 1 and "Traceback" not in outcome.stderr
    assert str(tmp_path / "nothing-here") in outcome.errors()[0]


@pytest.mark.slow  # a subprocess
def test_serve_is_listed_and_importing_the_cli_does_not_import_the_server():
    code = "import sys, clipseg_cli.cli; print('fastapi' in sys.modules, 'uvicorn' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=subprocess_env()).stdout.split() == ["False", "False"]
    assert "serve" in clipseg("--help").stdout
