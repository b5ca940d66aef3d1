"""The ASGI layer in front of every route: the token, the upload size and time, before a byte of the body is read.

- token: ``Authorization: Bearer TOKEN`` (API clients) or HTTP Basic with TOKEN as the password
  (a browser asks for it once), compared in constant time; ``/healthz`` is open to probes.
- size: a ``Content-Length`` over the limit is refused at once; a body sent without one (chunked)
  is counted as it streams and refused when it passes the limit, never read whole.
- time: a body that has not arrived whole within ``body_timeout_s`` of its request's head is refused (408).
- every answer, whichever layer gave it, is told to ``answered`` (the metrics count them by status).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from clipseg_cli.errors import ClipSegError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/healthz"})


def check_token(token: str | None, where: str = "--token") -> None:
    """Refuse a token no client could send: empty, only spaces, spaces around it, or not printable ASCII
    (HTTP headers are trimmed, and carry ASCII).

    Raises:
        ClipSegError: naming ``where`` (the option or argument that gave it).
    """
    if token is None:
        return
    if not token.strip():
        raise ClipSegError(f"{where} is empty or only spaces: give a secret of printable characters "
                           "(e.g. openssl rand -hex 16)")
    if token != token.strip() or not (token.isascii() and token.isprintable()):
        raise ClipSegError(f"{where} must be printable ASCII without spaces around it (a client sends it in an "
                           "HTTP header): e.g. openssl rand -hex 16")


class Guard:
    """Refuses requests without the token (401), bodies over ``max_bytes`` (413) and bodies slower than
    ``body_timeout_s`` (408), each with a one-line JSON error; tells ``answered`` of every answer."""

    def __init__(self, app: ASGIApp, *, token: str | None, max_bytes: int, body_timeout_s: float = 120.0,
                 answered: Callable[[str, int, float], None] = lambda path, status, seconds: None) -> None:
        """Raises:
            ClipSegError: a token no client could send (`check_token`).
        """
        check_token(token)
        self.app = app
        self.token = token.encode() if token else None
        self.max_bytes = max_bytes
        self.body_timeout_s = body_timeout_s
        self.answered = answered

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began, status = time.monotonic(), 500  # no answer sent at all: the server's own 500

        async def counted_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._guarded(scope, receive, counted_send)
        finally:
            self.answered(scope["path"], status, time.monotonic() - began)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {key.decode("latin-1").lower(): value for key, value in scope["headers"]}
        if self.token is not None and scope["path"] not in OPEN_PATHS and not self._authorized(headers):
            await error(send, 401, "missing or wrong token: send the header Authorization: Bearer TOKEN",
                        {"www-authenticate": 'Basic realm="clipseg serve", charset="UTF-8"'})
            return
        length = headers.get("content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await error(send, 413, f"the request body is {int(length)} bytes; this server takes at most "
                                   f"{self.max_bytes} (--max-upload-mb)")
            return
        received, started, refused, complete = 0, False, False, False
        deadline = time.monotonic() + self.body_timeout_s

        async def refuse(status: int, message: str) -> Message:
            nonlocal refused
            refused = True
            await error(send, status, message)
            return {"type": "http.disconnect"}  # the app sees the client leave

        async def guarded_receive() -> Message:
            nonlocal received, complete
            if refused:
                return {"type": "http.disconnect"}
            if complete:  # the body is in: what follows is the client leaving, however late
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                if started:
                    return {"type": "http.disconnect"}
                return await refuse(408, f"the request body did not arrive within {self.body_timeout_s:g} s "
                                         "(--body-timeout)")
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > self.max_bytes and not started:
                    return await refuse(413, f"the request body passed {self.max_bytes} bytes (--max-upload-mb)")
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if refused:  # the 413 or 408 is the answer
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, guarded_receive, tracked_send)
        except Exception:
            if not refused:
                raise

    def _authorized(self, headers: dict[str, bytes]) -> bool:
        """Whether the Authorization header carries the token (Bearer, or Basic with any user name)."""
        scheme, _, value = headers.get("authorization", b"").partition(b" ")
        if scheme.lower() == b"basic":
            try:
                value = base64.b64decode(value.strip(), validate=True).partition(b":")[2]
            except (binascii.Error, ValueError):
                value = b""
        elif scheme.lower() != b"bearer":
            value = b""
        return hmac.compare_digest(value.strip(), self.token)


async def error(send: Send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    """Answer with ``{"error": message}`` (one line) and the given status."""
    body = json.dumps({"error": message}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
           *((key.encode(), value.encode()) for key, value in (headers or {}).items())]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
