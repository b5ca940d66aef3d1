"""``clipseg serve``: the model loaded once; masks over HTTP (``/v1/segment``) and in the browser (``/``)."""

from __future__ import annotations

import ipaddress
import sys
from typing import Annotated

import typer

from clipseg_cli.commands import options
from clipseg_cli.constants import DEFAULT_MAX_PIXELS, DEFAULT_MODEL
from clipseg_cli.errors import ClipSegError

SERVER = "Server"


def serve(
    weights: options.Weights = DEFAULT_MODEL,
    device: options.Device = "auto",
    precision: options.Precision = "auto",
    refine: options.Refine = "none",
    max_pixels: options.MaxPixels = DEFAULT_MAX_PIXELS,
    host: Annotated[str, typer.Option("--host", rich_help_panel=SERVER,
                                      help="Address to listen on; another than loopback needs --token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, rich_help_panel=SERVER)] = 8000,
    token: Annotated[str | None, typer.Option("--token", envvar="CLIPSEG_TOKEN", rich_help_panel=SERVER,
                                              help="Every route but /healthz needs Authorization: Bearer TOKEN.")]
    = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", rich_help_panel=SERVER,
                                          help="Listen on a non-loopback address without a token.")] = False,
    cors: Annotated[list[str] | None, typer.Option("--cors", metavar="ORIGIN", rich_help_panel=SERVER,
                                                   help="Let pages of this origin call the API (repeatable).")]
    = None,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", min=0.001, rich_help_panel=SERVER,
                                                 help="Refuse bodies larger than this (413).")] = 50.0,
    max_queue: Annotated[int, typer.Option("--max-queue", min=1, rich_help_panel=SERVER,
                                           help="Requests waiting or running; more get 503.")] = 64,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, rich_help_panel=SERVER,
                                            help="Requests per model call.")] = 4,
    batch_wait_ms: Annotated[float, typer.Option("--batch-wait-ms", min=0.0, rich_help_panel=SERVER,
                                                 help="How long the first request waits for others to batch.")]
    = 5.0,
) -> None:
    """Serve masks over HTTP: POST /v1/segment, GET /healthz, GET /metrics, the page at /, the API docs at /docs."""
    check_exposure(host, token, no_auth)
    try:
        import uvicorn

        from clipseg_cli.serve.app import ServeConfig, create_app
    except ImportError as exc:
        raise ClipSegError(f'clipseg serve needs the serve extra ({exc.name} is missing): '
                           'pip install "clipseg-cli[serve]"') from None
    from clipseg_cli.predictor import Segmenter
    from clipseg_cli.refine import check_available, load_refiner
    from clipseg_cli.serve.library import Loaded

    check_available(refine)
    segmenter = Segmenter.from_pretrained(weights, device=device, precision=precision)
    loaded = Loaded(segmenter, load_refiner(refine, device=segmenter.device_type))
    config = ServeConfig(token=token, cors=tuple(cors or ()), max_upload_mb=max_upload_mb, max_queue=max_queue,
                         batch_size=batch_size, batch_wait_ms=batch_wait_ms, max_pixels=max_pixels, refine=refine)
    server = _server(uvicorn.Config(create_app(lambda: loaded, config), host=host, port=port, log_level="warning",
                                    timeout_graceful_shutdown=60, lifespan="on"))
    print(f"clipseg serve: http://{host}:{port}/ (API docs at /docs); Ctrl-C stops", file=sys.stderr)
    server.run()
    if not server.started:
        raise ClipSegError(f"could not listen on {host}:{port} (in use, or not an address of this machine)")


def check_exposure(host: str, token: str | None, no_auth: bool) -> None:
    """Refuse to listen beyond this machine without a token, unless --no-auth says so (then warn)."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback or token:
        return
    if not no_auth:
        raise ClipSegError(f"--host {host} lets other machines in: give --token (or CLIPSEG_TOKEN), "
                           "or --no-auth to serve without one")
    print(f"clipseg serve: warning: {host} is served without a token (--no-auth): anyone who can reach it "
          "can use it", file=sys.stderr)


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, whose SIGTERM/SIGINT drain the requests in flight and then return (exit 0)."""

        def capture_signals(self):  # uvicorn re-raises the signal afterwards; the drain is our whole answer
            import contextlib
            import signal

            @contextlib.contextmanager
            def captured():
                previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
                try:
                    yield
                finally:
                    for sig, handler in previous.items():
                        signal.signal(sig, handler)

            return captured()

    return Server


def _server(config):
    """A draining uvicorn server; the class is made on first use: importing this module never imports uvicorn."""
    return _server_class()(config)
