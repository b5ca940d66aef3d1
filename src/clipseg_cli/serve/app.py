"""The FastAPI app of ``clipseg serve``: ``POST /v1/segment``, ``GET /healthz``, ``GET /metrics``.

Every error is a JSON body with one line, ``{"error": "..."}``; the server keeps serving after it.
The web page (``/``) and the OpenAPI page (``/docs``) are serve/pages.py's.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException

from clipseg_cli.constants import DEFAULT_MAX_PIXELS, DEFAULT_THRESHOLD
from clipseg_cli.errors import ClipSegError
from clipseg_cli.imaging.decode import header_pixels
from clipseg_cli.serve.batching import MicroBatcher, QueueFull
from clipseg_cli.serve.forms import Utf8Route, accepted
from clipseg_cli.serve.guard import ASGIApp, Guard, Receive, Scope, Send
from clipseg_cli.serve.library import Answer, Loaded, Options, Upload, run_job
from clipseg_cli.serve.pages import add_pages

FIELDS = frozenset({"image", "prompt", "negative", "template", "union", "threshold", "blur", "dilate", "erode",
                    "min_area", "invert", "soft", "overlay", "cutout", "refine"})


@dataclass(frozen=True)
class ServeConfig:
    """The server's limits (``clipseg serve`` options of the same names)."""

    token: str | None = None
    cors: tuple[str, ...] = ()
    max_upload_mb: float = 50.0
    max_queue: int = 64
    batch_size: int = 4
    batch_wait_ms: float = 5.0
    max_pixels: int = DEFAULT_MAX_PIXELS
    refine: str = "none"
    header_timeout_s: float = 10.0  # a request's head (line and headers) arrives within this, else 408
    body_timeout_s: float = 120.0  # its body, from the end of its head, within this, else 408
    max_connections: int = 256  # open connections; requests beyond are answered 503
    drain_s: float = 60.0  # after SIGTERM, the requests held are answered within this


class Failed(HTTPException):
    """An answer other than 200, with its one-line message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status, " ".join(message.split()), headers)


class Metrics:
    """Prometheus metrics of one app (its own registry)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("clipseg_requests", "Answers to /v1/ requests by status, whoever gave them",
                                ["status"], registry=self.registry)
        self.latency = Histogram("clipseg_request_seconds", "Latency of /v1/ requests", registry=self.registry)
        self.depth = Gauge("clipseg_queue_depth", "Requests waiting for the model", registry=self.registry)
        self.running = Gauge("clipseg_running", "Requests in the model now", registry=self.registry)
        self.batch = Histogram("clipseg_batch_size", "Requests per model call", buckets=(1, 2, 4, 8, 16, 32, 64),
                               registry=self.registry)
        self.model = Histogram("clipseg_model_seconds", "Seconds per model call", registry=self.registry)

    def observe(self, size: int, seconds: float) -> None:
        self.batch.observe(size)
        self.model.observe(seconds)

    def answered(self, path: str, status: int, seconds: float) -> None:
        """Count one answer (the guard calls this for every request, whichever layer answered it)."""
        if path.startswith("/v1/"):
            self.requests.labels(str(status)).inc()
            self.latency.observe(seconds)


class ServeApp:
    """The ASGI app of ``clipseg serve``: CORS, then the token and limits (`Guard`), then the FastAPI app."""

    def __init__(self, app: ASGIApp, api: FastAPI) -> None:
        self.app, self.api = app, api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    def drain(self) -> None:
        """From now on /healthz says 503 (a load balancer stops sending); requests are still answered."""
        self.api.state.draining = True


def create_app(load: Callable[[], Loaded], config: ServeConfig | None = None) -> ServeApp:
    """The ASGI app: CORS (answering the preflights of its origins), the token and upload guard, the FastAPI app.

    Arguments:
        load: returns the model; called once, in a thread, before the first request is accepted.

    Returns:
        The app to give uvicorn (``.api`` is the FastAPI app).
    """
    config = config or ServeConfig()
    metrics = Metrics()
    state: dict[str, object] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = await asyncio.to_thread(load)
        batcher = MicroBatcher(lambda job, uploads: run_job(loaded, job, uploads), max_queue=config.max_queue,
                               batch_size=config.batch_size, wait_s=config.batch_wait_ms / 1000,
                               observe=metrics.observe)
        metrics.depth.set_function(lambda: batcher.depth)
        metrics.running.set_function(lambda: batcher.running)
        state.update(batcher=batcher)
        batcher.start()
        try:
            yield
        finally:
            batcher.stop()
            state.clear()

    api = FastAPI(title="clipseg serve", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    api.router.route_class = Utf8Route  # a form field that is not UTF-8 is a 422, never read as Latin-1
    api.state.draining = False
    _handlers(api)
    add_pages(api)  # / and /docs, from files shipped in wheels (no CDN)

    @api.get("/healthz")
    async def healthz() -> JSONResponse:
        """200 once the model is loaded; 503 while it loads, and from SIGTERM on (draining)."""
        if api.state.draining:
            return JSONResponse({"status": "draining"}, 503)
        return JSONResponse({"status": "ready"} if state else {"status": "loading"}, 200 if state else 503)

    @api.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @api.post("/v1/segment", responses={200: {"content": {"image/png": {}, "application/json": {}}}})
    async def segment(
        request: Request,
        image: Annotated[UploadFile, File(description="The image to segment.")],
        prompt: Annotated[list[str], Form(description="What to cut out (repeatable).")],
        negative: Annotated[list[str], Form(description="Cut out pixels where this fires (repeatable).")] = (),
        template: Annotated[list[str], Form(description='e.g. "a photo of a {}." (repeatable).')] = (),
        union: Annotated[bool, Form()] = False,
        threshold: Annotated[float, Form(ge=0.0, le=1.0)] = DEFAULT_THRESHOLD,
        blur: Annotated[float, Form(ge=0.0)] = 0.0,
        dilate: Annotated[int, Form(ge=0)] = 0,
        erode: Annotated[int, Form(ge=0)] = 0,
        min_area: Annotated[int, Form(ge=0)] = 0,
        invert: Annotated[bool, Form()] = False,
        soft: Annotated[bool, Form(description="The mask is the probability as 8-bit grey.")] = False,
        overlay: Annotated[bool, Form()] = False,
        cutout: Annotated[bool, Form()] = False,
        refine: Annotated[str, Form(description="none, or the server's --refine.")] = "none",
    ) -> Response:
        """Segment one image: the mask PNG itself (one mask, no overlay or cut-out, Accept not preferring JSON),
        else JSON with, per mask, the PNGs in base64 and the statistics ``clipseg segment --json`` prints."""
        unknown = sorted(set((await request.form()).keys()) - FIELDS)
        if unknown:
            raise Failed(422, f"unknown field {unknown[0]!r}; the fields are {', '.join(sorted(FIELDS))}")
        if any(not text.strip() for text in (*prompt, *negative)):
            raise Failed(422, "a prompt is empty; give some text")
        if refine not in ("none", config.refine):
            instead = (f"this server refines nothing; start it with clipseg serve --refine {refine}"
                       if config.refine == "none" else f"use none or {config.refine} (clipseg serve --refine)")
            raise Failed(422, f"refine {refine!r} is not loaded here; {instead}")
        try:  # every value is checked where the CLI checks it: one line, 422
            job = Options(tuple(prompt), tuple(negative), tuple(template), union, threshold, blur, dilate, erode,
                          min_area, invert, soft, overlay, cutout, refine).job(config.max_pixels, config.batch_size)
        except ClipSegError as exc:
            raise Failed(422, str(exc)) from None
        png = _wants_png(request.headers.get("accept"), not (overlay or cutout) and (len(prompt) == 1 or union))
        label = image.filename or "image"
        upload = Upload(await image.read(), label)
        pixels = await asyncio.to_thread(header_pixels, upload.data)
        if pixels == 0:
            raise Failed(422, f"{label}: not an image clipseg can read")
        if pixels > config.max_pixels:
            raise Failed(413, f"{label}: {pixels} pixels, more than this server takes ({config.max_pixels}, "
                              "--max-pixels)")
        try:
            future = state["batcher"].submit(job, upload)
        except QueueFull:
            raise Failed(503, "the server is busy: its queue is full; retry later", {"Retry-After": "1"}) from None
        return _response(await _answer_or_leave(request, asyncio.wrap_future(future)), png)

    api.state.metrics = metrics
    app: ASGIApp = Guard(api, token=config.token, max_bytes=int(config.max_upload_mb * 1024 * 1024),
                         body_timeout_s=config.body_timeout_s, answered=metrics.answered)
    if config.cors:  # outside the guard: preflights need no token, and refusals carry the CORS headers too
        from starlette.middleware.cors import CORSMiddleware

        app = CORSMiddleware(app, allow_origins=list(config.cors), allow_methods=["GET", "POST"],
                             allow_headers=["Authorization", "Accept"])
    return ServeApp(app, api)


def _wants_png(accept: str | None, one_mask: bool) -> bool:
    """Whether to answer with the mask PNG itself: one mask, and Accept (q-values honoured) prefers image/png to
    application/json; at equal q, the PNG unless application/json is named (not by a wildcard) or Accept takes neither.

    Raises:
        Failed: 422 when Accept takes only the PNG but the answer has several files.
    """
    png, _ = accepted(accept, "image/png")
    json, json_named = accepted(accept, "application/json")
    if not one_mask:
        if png > 0 and json == 0:
            raise Failed(422, "Accept: image/png returns one mask: give one prompt (or union) and no overlay or "
                              "cutout, or ask for application/json")
        return False
    return png > json or (png == json and (png == 0 or not json_named))


async def _answer_or_leave(request: Request, answer: asyncio.Future) -> list:
    """The batcher's answer; when the client leaves first, its request is cancelled (its place freed)."""

    async def left() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(left())
    try:
        await asyncio.wait({answer, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not answer.done():
        answer.cancel()
        raise Failed(499, "the client left")
    return answer.result()


def _response(answers: list[Answer] | ClipSegError, png: bool) -> Response:
    """The mask PNG itself, or JSON with every file in base64; an upload that could not be decoded is a 422."""
    if isinstance(answers, ClipSegError):
        raise Failed(422, str(answers))
    if png:
        return Response(answers[0].files["mask"], media_type="image/png")
    masks = []
    for answer in answers:
        record = {"prompt": answer.result.prompt, **answer.result.stats}
        if answer.result.refine:
            record["refine"] = answer.result.refine
        record.update({kind: base64.b64encode(data).decode() for kind, data in answer.files.items()})
        masks.append(record)
    return JSONResponse({"masks": masks})


def _handlers(api: FastAPI) -> None:
    """Every error answered as ``{"error": one line}``, never a traceback."""

    @api.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request"
        return JSONResponse({"error": " ".join(f"{where}: {first.get('msg', 'invalid')}".split())}, 422)

    @api.exception_handler(HTTPException)
    async def refused(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, exc.status_code, headers=exc.headers)

    @api.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": " ".join(f"internal error: {type(exc).__name__}: {exc}".split())}, 500)
