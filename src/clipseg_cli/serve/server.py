"""``clipseg serve``'s uvicorn: the app behind bounded connections, and a drain on SIGTERM that loses no request.

- A request's head (its line and headers) must arrive within ``header_timeout_s`` of its first byte
  (of the connection's opening, for the first): a slow client gets 408 and is closed. Its body is
  bounded by the app's guard (``body_timeout_s``), the number of open connections by uvicorn
  (``max_connections``: requests beyond are answered 503).
- SIGTERM or SIGINT: /healthz says 503 at once; the connections waiting to be accepted are accepted,
  then no more; a request whose bytes reached the server is answered (its connection then closed),
  idle connections are closed, and the server waits up to ``drain_s`` for the answers, then exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import signal
from typing import Any

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from clipseg_cli.serve.app import ServeApp, ServeConfig

_SETTLE_TURNS = 20  # loop turns given to the connections just accepted, so that they are counted in the drain


def run(app: ServeApp, config: ServeConfig, *, host: str, port: int) -> bool:
    """Serve ``app`` until SIGTERM or SIGINT, then drain (see the module's docstring).

    Returns:
        Whether the server started (False: the address could not be listened on).
    """
    server = _Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on",
                                    timeout_graceful_shutdown=config.drain_s,
                                    limit_concurrency=config.max_connections,
                                    http=bounded_protocol(config.header_timeout_s)), app)
    server.run()
    return server.started


class _Server(uvicorn.Server):
    """uvicorn's server, whose SIGTERM/SIGINT drain the requests that reached it and then return (exit 0)."""

    def __init__(self, config: uvicorn.Config, app: ServeApp) -> None:
        super().__init__(config)
        self.served = app

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.served.drain()  # /healthz says 503 from now on
        super().handle_exit(sig, frame)

    def capture_signals(self) -> contextlib.AbstractContextManager[None]:
        """SIGINT and SIGTERM drain (uvicorn would re-raise the signal afterwards: the drain is our whole answer)."""

        @contextlib.contextmanager
        def captured():
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

        return captured()

    async def shutdown(self, sockets: list | None = None) -> None:
        """Accept the connections waiting in the backlog (their bytes reached us), then uvicorn's drain."""
        listening = [sock for server in self.servers for sock in server.sockets]
        while listening and select.select(listening, [], [], 0)[0]:
            await asyncio.sleep(0)  # the loop accepts them
        for _ in range(_SETTLE_TURNS):  # and makes their protocols
            await asyncio.sleep(0)
        await super().shutdown(sockets)


def bounded_protocol(header_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools or h11), with a time limit on each request's head, and a drain that
    answers a request whose first bytes arrived instead of closing its connection.

    Returns:
        The protocol class for ``uvicorn.Config(http=...)``.
    """

    class Bounded(AutoHTTPProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            self._head_timer: asyncio.TimerHandle | None = None
            self._head_since: float | None = asyncio.get_running_loop().time()  # the head being awaited began
            self._begun = False  # bytes of a request arrived; its head is not complete
            self._draining = False
            self._time_head()

        def data_received(self, data: bytes) -> None:
            if not self._in_request():
                self._begun = True
                if self._head_since is None:  # the first byte of the next request's head
                    self._head_since = asyncio.get_running_loop().time()
                self._time_head()
            super().data_received(data)
            if self._in_request():
                self._begun, self._head_since = False, None
                if self._draining:  # answered, then closed
                    self.cycle.keep_alive = False

        def shutdown(self) -> None:
            if not self._in_request() and (self._begun or _readable(self.transport)):
                self._draining = True  # its bytes reached us before the drain: it is answered
                return
            super().shutdown()

        def _in_request(self) -> bool:
            return self.cycle is not None and not self.cycle.response_complete

        def _time_head(self) -> None:
            if self._head_timer is None and self._head_since is not None:
                left = self._head_since + header_timeout_s - asyncio.get_running_loop().time()
                self._head_timer = asyncio.get_running_loop().call_later(max(0.0, left), self._head_late)

        def _head_late(self) -> None:
            """The head awaited since ``_head_since`` is late (or the connection never sent one): 408, closed."""
            self._head_timer = None
            if self._head_since is None or self._in_request() or self.transport.is_closing():
                return  # a request began in time; an idle connection after it is uvicorn's keep-alive's
            if asyncio.get_running_loop().time() < self._head_since + header_timeout_s:
                self._time_head()  # a later head, begun after this timer was set
                return
            body = json.dumps({"error": f"the request head did not arrive within {header_timeout_s:g} s "
                                        "(--header-timeout)"}).encode()
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                 b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            self.transport.close()

    return Bounded


def _readable(transport: asyncio.BaseTransport) -> bool:
    """Whether bytes wait in the connection's socket, not yet read by the loop."""
    sock = transport.get_extra_info("socket")
    try:
        return sock is not None and bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return False
