"""``clipseg serve --ray``: the same app as Ray Serve replicas behind Ray's HTTP proxy.

Each replica loads the model once, in its constructor (a bad checkpoint fails the deployment with
the CLI's one-line error), and runs the app of `clipseg_cli.serve.app` (token, limits, batching)
in front of it. `deployment` builds the application, `app` is the builder of
``serve run clipseg_cli.serve.ray:app KEY=VALUE ...``, `run` is ``clipseg serve --ray``.
Needs the ``serve-ray`` extra: ``pip install "clipseg-cli[serve-ray]"``.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, ValidationError
from ray import serve
from ray.serve import Application

from clipseg_cli import LOGGER
from clipseg_cli.constants import DEFAULT_MAX_PIXELS, DEFAULT_MODEL
from clipseg_cli.errors import ClipSegError
from clipseg_cli.predictor import ModelSpec
from clipseg_cli.serve.app import ServeConfig, create_app
from clipseg_cli.serve.guard import ASGIApp, Receive, Scope, Send, check_token
from clipseg_cli.serve.library import load

LOG = logging.getLogger(LOGGER)

APP_NAME = "clipseg"
REPLICA_HEADER = b"x-clipseg-replica"  # which replica answered: each has its own queue and /metrics
CONSTRUCTOR_TRIES = 2  # a checkpoint that fails to load fails the deployment, not 20 retries later
GRACE_S = 60.0  # a stopping replica answers the requests it holds within this


@dataclass(frozen=True)
class Scale:
    """How many replicas, and what each holds (``--replicas``, ``--autoscale``, ``--replica-cpus``).

    replicas: a fixed number of replicas (when autoscale is None).
    autoscale: (min, max) replicas, scaled on requests in flight (``batch_size`` per replica targeted).
    cpus: Ray CPUs each replica reserves (its torch threads).
    gpus: Ray GPUs each replica reserves (1 for ``--device cuda``).
    """

    replicas: int = 1
    autoscale: tuple[int, int] | None = None
    cpus: float = 1.0
    gpus: float = 0.0

    def __post_init__(self) -> None:
        if self.autoscale and self.replicas != 1:
            raise ClipSegError("replicas and autoscale: give one (a fixed number, or MIN:MAX)")

    @staticmethod
    def parse_autoscale(text: str, option: str = "--autoscale") -> tuple[int, int]:
        """Returns: (min, max) from ``MIN:MAX``; raises ClipSegError naming ``option`` otherwise."""
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
        if not match or not 0 <= int(match[1]) <= int(match[2]) or int(match[2]) == 0:
            raise ClipSegError(f"{option} {text!r}: give MIN:MAX replicas, 0 <= MIN <= MAX, MAX >= 1 (e.g. 1:4)")
        return int(match[1]), int(match[2])


class LoadFailed(ClipSegError):
    """A replica could not load the model; the message is the CLI's one-line error."""


class _Replica:
    """One Ray Serve replica: the model loaded once, the server's app in front of it."""

    def __init__(self, model: ModelSpec, config: ServeConfig) -> None:
        self.config = config
        try:
            self.loaded = load(model, config.refine)
        except ClipSegError as exc:  # found by its name in the traceback Ray reports
            raise LoadFailed(" ".join(str(exc).split())) from None

    def __serve_build_asgi_app__(self) -> ASGIApp:
        replica = serve.get_replica_context().replica_id.unique_id.encode()
        return _Tagged(create_app(lambda: self.loaded, self.config), replica)


Replica = serve.deployment(serve.ingress()(_Replica), name="Clipseg")


class _Tagged:
    """The app, every answer of which names the replica that gave it (header ``x-clipseg-replica``)."""

    def __init__(self, app: ASGIApp, replica: bytes) -> None:
        self.app = app
        self.replica = replica

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def tagged(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (REPLICA_HEADER, self.replica)]
            await send(message)

        await self.app(scope, receive, tagged if scope["type"] == "http" else send)


def deployment(model: ModelSpec, config: ServeConfig, scale: Scale) -> Application:
    """The Ray Serve application: ``scale`` replicas of the server, each with the model loaded once.

    Arguments:
        model: the checkpoint each replica loads.
        config: the token, CORS and limits of every replica (as ``clipseg serve``).
        scale: the replicas and their resources.

    Returns:
        The application to give ``serve.run`` (or to return from a ``serve run`` builder).
    """
    sizing = ({"autoscaling_config": {"min_replicas": scale.autoscale[0], "max_replicas": scale.autoscale[1],
                                      "target_ongoing_requests": config.batch_size}}
              if scale.autoscale else {"num_replicas": scale.replicas})
    # one more than the replica's queue: when every replica is full, its own 503 with Retry-After answers
    return Replica.options(**sizing, max_ongoing_requests=config.max_queue + 1,
                           ray_actor_options={"num_cpus": scale.cpus, "num_gpus": scale.gpus},
                           graceful_shutdown_timeout_s=GRACE_S,
                           max_constructor_retry_count=CONSTRUCTOR_TRIES).bind(model, config)


class Arguments(BaseModel):
    """The ``KEY=VALUE`` arguments of ``serve run clipseg_cli.serve.ray:app``: the options of ``clipseg serve``,
    underscored (``max_queue=16``); ``cors`` is comma-separated; the token may come from ``CLIPSEG_TOKEN``."""

    model_config = ConfigDict(extra="forbid")

    weights: str = str(DEFAULT_MODEL)
    device: str = "auto"
    precision: str = "auto"
    refine: str = "none"
    max_pixels: int = DEFAULT_MAX_PIXELS
    token: str | None = None
    no_auth: bool = False
    cors: str = ""
    max_upload_mb: float = ServeConfig.max_upload_mb
    max_queue: int = ServeConfig.max_queue
    batch_size: int = ServeConfig.batch_size
    batch_wait_ms: float = ServeConfig.batch_wait_ms
    body_timeout: float = ServeConfig.body_timeout_s  # the head, connections and drain are Ray's proxy's
    replicas: int = 1
    autoscale: str | None = None
    replica_cpus: float = 1.0


def app(arguments: dict[str, str]) -> Application:
    """The application builder of ``serve run clipseg_cli.serve.ray:app weights=... token=... replicas=2``.

    A cluster's proxy is reached from other machines: a token (``token=`` or ``CLIPSEG_TOKEN``) is
    required, unless ``no_auth=true`` says otherwise (then it warns).

    Arguments:
        arguments: the ``KEY=VALUE`` pairs of ``serve run`` (see `Arguments`).

    Returns:
        The application ``serve run`` deploys.
    """
    try:
        args = Arguments.model_validate(arguments)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "arguments"
        raise ClipSegError(f"clipseg_cli.serve.ray:app {where}: {first['msg']}; the arguments are "
                           f"{', '.join(Arguments.model_fields)}") from None
    token = args.token if args.token is not None else os.environ.get("CLIPSEG_TOKEN") or None
    check_token(token, "token=")
    if not token and not args.no_auth:
        raise ClipSegError("serve run clipseg_cli.serve.ray:app: give token=TOKEN (or CLIPSEG_TOKEN): Ray's proxy "
                           "is reached from other machines; or no_auth=true to serve without one")
    if not token:
        LOG.warning("serve: served without a token (no_auth=true): anyone who can reach Ray's proxy can use it")
    config = ServeConfig(token=token, cors=tuple(o for o in args.cors.split(",") if o), max_queue=args.max_queue,
                         max_upload_mb=args.max_upload_mb, batch_size=args.batch_size,
                         batch_wait_ms=args.batch_wait_ms, max_pixels=args.max_pixels, refine=args.refine,
                         body_timeout_s=args.body_timeout)
    scale = Scale(args.replicas, Scale.parse_autoscale(args.autoscale, "autoscale=") if args.autoscale else None,
                  args.replica_cpus, 1.0 if args.device == "cuda" else 0.0)
    return deployment(ModelSpec(args.weights, args.device, args.precision), config, scale)


def run(application: Application, *, host: str, port: int, address: str | None) -> None:
    """``clipseg serve --ray``: deploy on Ray (a local one of its own, or ``address``'s cluster) until
    SIGTERM or Ctrl-C, then delete the application (replicas answer what they hold) and leave Ray.

    Arguments:
        application: from `deployment`.
        address: None starts a local Ray; ``auto`` joins this machine's cluster, else ``ray://HOST:10001``.
    """
    import ray

    try:
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise ClipSegError(f"--ray-address {address or '(local)'}: cannot start or join Ray ({exc}); "
                           "check the address (ray status shows it) or leave it out for a local Ray") from None
    stop = threading.Event()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        serve.start(http_options={"host": host, "port": port})
        try:
            serve.run(application, name=APP_NAME, route_prefix="/", blocking=False)
        except RuntimeError as exc:
            raise ClipSegError(_replica_error(str(exc))) from None
        for sig in previous:  # only now: Ray's start-up sets its own handlers
            signal.signal(sig, lambda *_: stop.set())
        LOG.warning("serve --ray: http://%s:%s/ (Ray Serve proxy; API docs at /docs); Ctrl-C stops", host, port)
        stop.wait()
        serve.delete(APP_NAME)  # a local Ray goes with ray.shutdown, its Serve controller and proxy with it
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        ray.shutdown()


def _replica_error(text: str) -> str:
    """The one-line error a replica raised while loading (`LoadFailed`), else the first line of Ray's message."""
    deployments = getattr(serve.status().applications.get(APP_NAME), "deployments", {})
    text = "\n".join([text, *(deployment.message for deployment in deployments.values())])
    found = re.findall(rf"{LoadFailed.__name__}: (.+)", text)
    return found[-1].strip() if found else f"Ray Serve could not deploy clipseg: {text.strip().splitlines()[0]}"
