"""What the tests of ``clipseg serve`` share, plain or on Ray Serve: a free port, one request, the CLI's files."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from helpers import clipseg

if TYPE_CHECKING:
    import httpx

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(server: Any, image: Path | bytes, *prompts: str, headers: dict | None = None,
         **fields: object) -> httpx.Response:
    """``POST /v1/segment`` to ``server.url`` with the token, the image and the prompts."""
    import httpx  # the dev extra's; the test modules skip without it

    data = {"prompt": list(prompts), **{key: str(value).lower() if isinstance(value, bool) else str(value)
                                        for key, value in fields.items()}}
    content = image if isinstance(image, bytes) else image.read_bytes()
    return httpx.post(f"{server.url}/v1/segment", files={"image": ("photo.png", content)}, data=data,
                      headers={**AUTH, **(headers or {})}, timeout=120)


def segment_cli(image: Path, out: Path, checkpoint: Path, *args: object) -> list[dict]:
    """Run ``clipseg segment IMAGE ARGS --json`` on the tiny checkpoint; returns its records."""
    outcome = clipseg("segment", image, *args, "-o", out, "--weights", checkpoint, "--precision", "fp32", "--json")
    assert outcome.code == 0, outcome.stderr
    return outcome.records()


def assert_masks_are_segment_files(server: Any, asked: list[tuple[Path, str]], images: list[Path], checkpoint: Path,
                                   out: Path) -> None:
    """Ask for every (image, prompt) at once; each answer must be the mask PNG ``clipseg segment`` writes."""
    with ThreadPoolExecutor(len(asked)) as pool:
        answers = list(pool.map(lambda pair: post(server, pair[0], pair[1]), asked))
    prompts = sorted({prompt for _, prompt in asked})
    for image in images:
        segment_cli(image, out, checkpoint, *prompts, "--no-overlay")
    for (image, prompt), answer in zip(asked, answers, strict=True):
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "image/png"
        assert answer.content == (out / f"{image.stem}.{prompt}.mask.png").read_bytes(), (image, prompt)
