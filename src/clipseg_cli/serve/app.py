"""The FastAPI app of ``clipseg serve``: ``POST /v1/segment``, ``GET /healthz``, ``GET /metrics``.

Every error is a JSON body with one line, ``{"error": "..."}``; the server keeps serving after it.
The web page (``/``) and the OpenAPI page (``/docs``) are serve/pages.py's.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
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
from clipseg_cli.serve.guard import Guard
from clipseg_cli.serve.library import Loaded, Options, run_job
from clipseg_cli.serve.pages import add_pages

FIELDS = frozenset({"image", "prompt", "negative", "template", "union", "threshold", "blur", "dilate", "erode",
                    "min_area", "invert", "soft", "overlay", "cutout", "refine"})
CHUNK = 1 << 20


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


class Failed(HTTPException):
    """An answer other than 200, with its one-line message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status, " ".join(message.split()), headers)


class Metrics:
    """Prometheus metrics of one app (its own registry)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("clipseg_requests", "Segment requests by status", ["status"], registry=self.registry)
        self.latency = Histogram("clipseg_request_seconds", "Segment request latency", registry=self.registry)
        self.depth = Gauge("clipseg_queue_depth", "Requests waiting for the model", registry=self.registry)
        self.running = Gauge("clipseg_running", "Requests in the model now", registry=self.registry)
        self.batch = Histogram("clipseg_batch_size", "Requests per model call", buckets=(1, 2, 4, 8, 16, 32, 64),
                               registry=self.registry)
        self.model = Histogram("clipseg_model_seconds", "Seconds per model call", registry=self.registry)

    def observe(self, size: int, seconds: float) -> None:
        self.batch.observe(size)
        self.model.observe(seconds)


def create_app(load: Callable[[], Loaded], config: ServeConfig | None = None) -> Guard:
    """The ASGI app: the token and upload guard in front of the FastAPI app.

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
        with tempfile.TemporaryDirectory(prefix="clipseg-serve-") as uploads:
            state.update(batcher=batcher, uploads=Path(uploads))
            batcher.start()
            try:
                yield
            finally:
                batcher.stop()
                state.clear()

    api = FastAPI(title="clipseg serve", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    _handlers(api)
    add_pages(api)  # / and /docs, from files shipped in wheels (no CDN)

    @api.get("/healthz")
    async def healthz() -> JSONResponse:
        """200 once the model is loaded."""
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
        """Segment one image: the mask PNG itself (one mask, no overlay or cut-out, Accept not asking for JSON),
        else JSON with, per mask, the PNGs in base64 and the statistics ``clipseg segment --json`` prints."""
        with metrics.latency.time():
            try:
                options = Options(tuple(prompt), tuple(negative), tuple(template), union, threshold, blur, dilate,
                                  erode, min_area, invert, soft, overlay, cutout, refine)
                response = await _segment(request, image, options)
            except HTTPException as exc:
                metrics.requests.labels(str(exc.status_code)).inc()
                raise
            metrics.requests.labels("200").inc()
            return response

    async def _segment(request: Request, image: UploadFile, options: Options) -> Response:
        unknown = sorted(set((await request.form()).keys()) - FIELDS)
        if unknown:
            raise Failed(422, f"unknown field {unknown[0]!r}; the fields are {', '.join(sorted(FIELDS))}")
        if any(not text.strip() for text in (*options.prompts, *options.negatives)):
            raise Failed(422, "a prompt is empty; give some text")
        if options.refine not in ("none", config.refine):
            raise Failed(422, f"refine {options.refine!r} is not loaded here; use none or {config.refine} "
                              "(clipseg serve --refine)")
        accept = request.headers.get("accept", "")
        png = "application/json" not in accept and not (options.overlay or options.cutout)
        png = png and (len(options.prompts) == 1 or options.union)
        if "image/png" in accept and not png:
            raise Failed(422, "Accept: image/png returns one mask: give one prompt (or union) and no overlay or "
                              "cutout, or ask for application/json")
        folder = Path(tempfile.mkdtemp(dir=state["uploads"]))
        try:
            upload = folder / "upload"
            await _save(image, upload)
            label = image.filename or "image"
            pixels = await asyncio.to_thread(header_pixels, upload)
            if pixels == 0:
                raise Failed(422, f"{label}: not an image clipseg can read")
            if pixels > config.max_pixels:
                raise Failed(413, f"{label}: {pixels} pixels, more than this server takes ({config.max_pixels}, "
                                  "--max-pixels)")
            job = options.job(max_pixels=config.max_pixels, batch_size=config.batch_size)
            try:
                job.check()
                future = state["batcher"].submit(job, upload)
            except ClipSegError as exc:
                raise Failed(422, str(exc)) from None
            except QueueFull:
                raise Failed(503, "the server is busy: its queue is full; retry later", {"Retry-After": "1"}) from None
            results = await _answer_or_leave(request, asyncio.wrap_future(future))
            return _response(results, png, str(upload), label)
        finally:
            await asyncio.to_thread(shutil.rmtree, folder, True)

    api.state.metrics = metrics
    guard = Guard(api, token=config.token, max_bytes=int(config.max_upload_mb * 1024 * 1024))
    if config.cors:
        from starlette.middleware.cors import CORSMiddleware

        api.add_middleware(CORSMiddleware, allow_origins=list(config.cors), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Accept"])
    guard.api = api
    return guard


async def _save(image: UploadFile, path: Path) -> None:
    """Copy the upload (spooled by the form parser) to ``path``."""
    with path.open("wb") as out:
        while chunk := await image.read(CHUNK):
            out.write(chunk)


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


def _response(results: list, png: bool, upload: str, label: str) -> Response:
    """The mask PNG itself, or JSON with every file in base64; a failed result is a 422 naming the upload."""
    failed = next((r for r in results if r.status != "ok"), None)
    if failed is not None:
        raise Failed(422, (failed.error or "failed").replace(upload, label))
    if png:
        return Response(Path(results[0].mask).read_bytes(), media_type="image/png")
    masks = []
    for result in results:
        record = {"prompt": result.prompt, **result.stats}
        if result.refine:
            record["refine"] = result.refine
        for kind in ("mask", "overlay", "cutout"):
            path = getattr(result, kind)
            if path:
                record[kind] = base64.b64encode(Path(path).read_bytes()).decode()
        masks.append(record)
    return JSONResponse({"masks": masks})


def _handlers(api: FastAPI) -> None:
    """Every error answered as ``{"error": one line}``, never a traceback."""

    @api.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        request.app.state.metrics.requests.labels("422").inc()
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request"
        return JSONResponse({"error": " ".join(f"{where}: {first.get('msg', 'invalid')}".split())}, 422)

    @api.exception_handler(HTTPException)
    async def refused(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, exc.status_code, headers=exc.headers)

    @api.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": " ".join(f"internal error: {type(exc).__name__}: {exc}".split())}, 500)
