"""``clipseg serve``: the model loaded once; masks over HTTP (``/v1/segment``) and in the browser (``/``)."""

from __future__ import annotations

import ipaddress
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from clipseg_cli.commands import options
from clipseg_cli.constants import DEFAULT_MAX_PIXELS, DEFAULT_MODEL
from clipseg_cli.errors import ClipSegError

if TYPE_CHECKING:
    from clipseg_cli.predictor import ModelSpec
    from clipseg_cli.serve.app import ServeConfig

SERVER = "Server"
RAY = "Ray Serve"


def serve(
    weights: options.Weights = DEFAULT_MODEL,
    device: options.Device = "auto",
    precision: options.Precision = "auto",
    refine: options.Refine = "none",
    max_pixels: options.MaxPixels = DEFAULT_MAX_PIXELS,
    host: Annotated[str, typer.Option("--host", rich_help_panel=SERVER,
                                      help="Address to listen on; another than loopback needs --token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, rich_help_panel=SERVER,
                                      help="Port to listen on.")] = 8000,
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
    header_timeout: Annotated[float, typer.Option("--header-timeout", min=0.001, rich_help_panel=SERVER,
                                                  help="Seconds a request's head may take to arrive (408 after).")]
    = 10.0,
    body_timeout: Annotated[float, typer.Option("--body-timeout", min=0.001, rich_help_panel=SERVER,
                                                help="Seconds a request's body may take to arrive (408 after).")]
    = 120.0,
    max_connections: Annotated[int, typer.Option("--max-connections", min=1, rich_help_panel=SERVER,
                                                 help="Open connections; requests beyond get 503.")] = 256,
    drain_timeout: Annotated[float, typer.Option("--drain-timeout", min=0.0, rich_help_panel=SERVER,
                                                 help="After SIGTERM, seconds to answer the requests held.")]
    = 60.0,
    ray: Annotated[bool, typer.Option("--ray", rich_help_panel=RAY,
                                      help="Serve as Ray Serve replicas behind Ray's HTTP proxy (a local Ray, on "
                                           "127.0.0.1 only).")]
    = False,
    replicas: Annotated[int, typer.Option("--replicas", min=1, rich_help_panel=RAY,
                                          help="Replicas, each with the model loaded once (implies --ray).")] = 1,
    autoscale: Annotated[str | None, typer.Option("--autoscale", metavar="MIN:MAX", rich_help_panel=RAY,
                                                  help="Scale replicas on load between MIN and MAX (implies --ray).")]
    = None,
    ray_address: Annotated[str | None, typer.Option("--ray-address", rich_help_panel=RAY,
                                                    help="Join this Ray cluster (auto, or ray://HOST:10001) instead of "
                                                         "a local Ray (implies --ray; needs --token or --no-auth).")]
    = None,
    replica_cpus: Annotated[float, typer.Option("--replica-cpus", min=0.0, rich_help_panel=RAY,
                                                help="Ray CPUs each replica reserves (implies --ray).")] = 1.0,
    ray_timeout: Annotated[float, typer.Option("--ray-timeout", min=1.0, metavar="SECONDS", rich_help_panel=RAY,
                                               help="How long the replicas may take to start; then exit 2 with "
                                                    "Ray's reason.")] = 300.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", rich_help_panel=RAY,
                                        help="No line per start-up stage (--ray); errors are still printed.")]
    = False,
) -> None:
    """Serve masks over HTTP: POST /v1/segment, GET /healthz, GET /metrics, the page at /, the API docs at /docs.
    With --ray, Ray Serve replicas of the same app behind Ray's HTTP proxy on --host/--port."""
    check_exposure(host, token, no_auth, cluster=ray_address)
    try:
        from clipseg_cli.serve import server
        from clipseg_cli.serve.app import ServeConfig, create_app
    except ImportError as exc:
        raise ClipSegError(f'clipseg serve needs the serve extra ({exc.name} is missing): '
                           'pip install "clipseg-cli[serve]"') from None
    from clipseg_cli.predictor import ModelSpec
    from clipseg_cli.refine import check_available
    from clipseg_cli.serve.library import load

    check_available(refine)
    model = ModelSpec(weights, device, precision)
    config = ServeConfig(token=token, cors=tuple(cors or ()), max_upload_mb=max_upload_mb, max_queue=max_queue,
                         batch_size=batch_size, batch_wait_ms=batch_wait_ms, max_pixels=max_pixels, refine=refine,
                         header_timeout_s=header_timeout, body_timeout_s=body_timeout,
                         max_connections=max_connections, drain_s=drain_timeout)
    if ray or replicas != 1 or autoscale or ray_address or replica_cpus != 1.0:
        _serve_on_ray(model, config, host=host, port=port, replicas=replicas, autoscale=autoscale,
                      address=ray_address, cpus=replica_cpus, timeout_s=ray_timeout, quiet=quiet)
        return
    loaded = load(model, refine)
    print(f"clipseg serve: http://{host}:{port}/ (API docs at /docs); Ctrl-C stops", file=sys.stderr)
    if not server.run(create_app(lambda: loaded, config), config, host=host, port=port):
        raise ClipSegError(f"could not listen on {host}:{port} (in use, or not an address of this machine)")


def _serve_on_ray(model: ModelSpec, config: ServeConfig, *, host: str, port: int, replicas: int, autoscale: str | None,
                  address: str | None, cpus: float, timeout_s: float, quiet: bool) -> None:
    """``--ray``: the same app as Ray Serve replicas (`clipseg_cli.serve.ray`)."""
    try:
        from clipseg_cli.serve import ray as on_ray
    except ImportError as exc:
        raise ClipSegError(f'clipseg serve --ray needs the serve-ray extra ({exc.name} is missing): '
                           'pip install "clipseg-cli[serve-ray]"') from None
    bounds = on_ray.Scale.parse_autoscale(autoscale) if autoscale else None
    scale = on_ray.Scale(replicas, bounds, cpus, 1.0 if model.device == "cuda" else 0.0)
    on_ray.run(on_ray.deployment(model, config, scale), scale, host=host, port=port, address=address,
               timeout_s=timeout_s, quiet=quiet)


def check_exposure(host: str, token: str | None, no_auth: bool, cluster: str | None = None) -> None:
    """Refuse a token no client could send, and listening beyond this machine without a token unless --no-auth
    says so (then warn). Joining a Ray cluster (``cluster``, --ray-address) counts as listening beyond it: its
    Serve proxies may already listen on other addresses, and run on other machines."""
    from clipseg_cli.serve.guard import check_token  # no web framework imported

    check_token(token, "--token (or CLIPSEG_TOKEN)")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if (loopback and not cluster) or token:
        return
    where = f"--ray-address {cluster}" if cluster else f"--host {host}"
    if not no_auth:
        raise ClipSegError(f"{where} lets other machines in: give --token (or CLIPSEG_TOKEN), "
                           "or --no-auth to serve without one")
    print(f"clipseg serve: warning: {where} is served without a token (--no-auth): anyone who can reach it "
          "can use it", file=sys.stderr)
