"""The ASGI layer in front of every route: the token, then the upload size, before a byte of the body is read.

- token: ``Authorization: Bearer TOKEN`` (API clients) or HTTP Basic with TOKEN as the password
  (a browser asks for it once), compared in constant time; ``/healthz`` is open to probes.
- size: a ``Content-Length`` over the limit is refused at once; a body sent without one (chunked)
  is counted as it streams and refused when it passes the limit, never read whole.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/healthz"})


class Guard:
    """Refuses requests without the token (401) and bodies over ``max_bytes`` (413), with a one-line JSON error."""

    def __init__(self, app: ASGIApp, *, token: str | None, max_bytes: int) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
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
        received, started, refused = 0, False, False

        async def counted_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes and not started:  # answer now; the app sees the client leave
                    refused = True
                    await error(send, 413, f"the request body passed {self.max_bytes} bytes (--max-upload-mb)")
                    return {"type": "http.disconnect"}
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if refused:  # the 413 is the answer
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
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
