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
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, ValidationError
from ray import serve
from ray.serve import Application
from ray.serve.schema import ApplicationStatus, ReplicaState

from clipseg_cli import LOGGER
from clipseg_cli.constants import DEFAULT_MAX_PIXELS, DEFAULT_MODEL
from clipseg_cli.errors import ClipSegError
from clipseg_cli.predictor import ModelSpec
from clipseg_cli.scale.ray_start import room, start_or_join
from clipseg_cli.serve.app import ServeConfig, create_app
from clipseg_cli.serve.guard import ASGIApp, Receive, Scope, Send, check_token
from clipseg_cli.serve.library import load

LOG = logging.getLogger(LOGGER)

APP_NAME = "clipseg"
REPLICA_HEADER = b"x-clipseg-replica"  # which replica answered: each has its own queue and /metrics
CONSTRUCTOR_TRIES = 2  # a checkpoint that fails to load fails the deployment, not 20 retries later
GRACE_S = 60.0  # a stopping replica answers the requests it holds within this
DEPLOY_TIMEOUT_S = 300.0  # how long the replicas may take to start (load the model), by default
POLL_S = 0.5  # how often the start asks Ray Serve how the replicas are


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
        _grpc_on_loopback()
        self.config = config
        try:
            self.loaded = load(model, config.refine)
        except ClipSegError as exc:  # found by its name in the traceback Ray reports
            raise LoadFailed(" ".join(str(exc).split())) from None

    def __serve_build_asgi_app__(self) -> ASGIApp:
        replica = serve.get_replica_context().replica_id.unique_id.encode()
        return _Tagged(create_app(lambda: self.loaded, self.config), replica)


Replica = serve.deployment(serve.ingress()(_Replica), name="Clipseg")


def _grpc_on_loopback() -> None:
    """In a replica on a node whose address is loopback (a local Ray that clipseg started): the gRPC server Ray
    Serve starts in each replica, for calls between deployments, listens on loopback as well.

    Ray Serve binds it to ``[::]:0``, every interface, whatever the node's address (``_on_initialized`` in
    ray/serve/_private/replica.py, after the replica's constructor); nothing off this machine could use it.
    """
    import ipaddress

    import ray
    from ray.serve._private import replica as internals

    bind = getattr(internals, "add_port_to_grpc_server", None)
    if bind is None or getattr(bind, "on_loopback", False) or not ipaddress.ip_address(
            ray.util.get_node_ip_address()).is_loopback:
        return

    def on_loopback(server: object, address: str) -> int:
        return bind(server, re.sub(r"^\[::\]:", "127.0.0.1:", address))

    on_loopback.on_loopback = True
    internals.add_port_to_grpc_server = on_loopback


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


def run(application: Application, scale: Scale, *, host: str, port: int, address: str | None,
        timeout_s: float = DEPLOY_TIMEOUT_S, quiet: bool = False) -> None:
    """``clipseg serve --ray``: deploy on Ray (a local one of its own, on loopback only, or ``address``'s
    cluster) until SIGTERM or Ctrl-C, then delete the application (replicas answer what they hold) and leave Ray.

    Before deploying, the cluster is asked whether it can hold the replicas (`check_room`); while they start,
    one line per stage is logged (not when ``quiet``); replicas that are not all running within ``timeout_s``
    fail the start with Ray's reason. A stop during the start stops Ray as well (KeyboardInterrupt goes on).

    Arguments:
        application: from `deployment`.
        scale: the replicas of ``application`` and what each holds.
        address: None starts a local Ray; ``auto`` joins this machine's cluster, else ``ray://HOST:10001``.
        timeout_s: how long the replicas may take to start (load the model) before the start fails.
        quiet: no line per stage, nothing of Ray's logging.

    Raises:
        ClipSegError: Ray could not start, the replicas do not fit, failed or did not start in time (one line).
    """
    import ray

    def tell(message: str) -> None:
        if not quiet:
            LOG.info("serve --ray: %s", message)

    tell(f"joining the Ray cluster at {address}" if address else "starting a local Ray (on 127.0.0.1 only)")
    local = start_or_join(address or "local", quiet=quiet)
    stop = threading.Event()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    serve_log = logging.getLogger("ray.serve")  # its INFO lines say in Ray's words what our stages say
    level = serve_log.level
    serve_log.setLevel(logging.CRITICAL if quiet else logging.WARNING)
    try:
        fit = check_room(scale, ray.nodes())
        if scale.autoscale and fit < scale.autoscale[1]:
            tell(f"--autoscale can reach {fit:g} of its {scale.autoscale[1]} replicas on this cluster")
        tell(f"starting Ray Serve's HTTP proxy on {host}:{port}")
        serve.start(http_options={"host": host, "port": port})
        tell(f"starting {_replicas(scale)} replica(s) of {_each(scale)}, each loading the model "
             f"(at most {timeout_s:g} s)")
        serve.run_many([serve.RunTarget(application, name=APP_NAME, route_prefix="/")],
                       wait_for_ingress_deployment_creation=False, wait_for_applications_running=False)
        _await_running(_wanted(scale), timeout_s, tell)
        for sig in previous:  # only now: Ray's start-up sets its own handlers
            signal.signal(sig, lambda *_: stop.set())
        LOG.warning("serve --ray: http://%s:%s/ (Ray Serve proxy; API docs at /docs); Ctrl-C stops", host, port)
        stop.wait()
        serve.delete(APP_NAME)  # a local Ray goes with ray.shutdown, its Serve controller and proxy with it
    except BaseException:  # failed or stopped while starting: a cluster keeps no half-started application
        if not local:
            with suppress(Exception):
                serve.delete(APP_NAME, _blocking=False)
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        serve_log.setLevel(level)
        ray.shutdown()


def check_room(scale: Scale, nodes: Sequence[Mapping]) -> float:
    """Whether the cluster's nodes can hold the replicas (each on one node), before anything is deployed: Ray
    would otherwise wait for resources that never come, silently.

    Arguments:
        scale: the replicas and what each reserves.
        nodes: ``ray.nodes()`` (each with ``Alive`` and ``Resources``).

    Returns:
        How many such replicas the cluster holds at most (``inf`` when they reserve nothing).

    Raises:
        ClipSegError: fewer than `_wanted` fit (one line: what was asked, what the cluster has).
    """
    found = room(nodes, CPU=scale.cpus, GPU=scale.gpus)
    if found.fit >= _wanted(scale):
        return found.fit
    no_gpu = scale.gpus and not any(node.get("Resources", {}).get("GPU") for node in nodes if node.get("Alive", True))
    hint = "use --device cpu or a cluster with GPUs" if no_gpu \
        else f"lower {'the --autoscale minimum' if scale.autoscale else '--replicas'} or --replica-cpus"
    raise ClipSegError(f"serve --ray: {_replicas(scale)} replica(s) of {_each(scale)} do not fit in this Ray cluster "
                       f"({found.has}: room for {found.fit}); {hint}")


def _wanted(scale: Scale) -> int:
    """Returns: the replicas that must run before the server is ready (autoscale: its minimum, at least 1)."""
    return max(1, scale.autoscale[0]) if scale.autoscale else scale.replicas


def _replicas(scale: Scale) -> str:
    """Returns: the replicas asked for, in words (``2`` or ``1 to 4``)."""
    return f"{scale.autoscale[0]} to {scale.autoscale[1]}" if scale.autoscale else str(scale.replicas)


def _each(scale: Scale) -> str:
    """Returns: what one replica reserves, in words (``4 CPU``, ``1 CPU and 1 GPU``)."""
    return f"{scale.cpus:g} CPU" + (f" and {scale.gpus:g} GPU" if scale.gpus else "")


def _await_running(wanted: int, timeout_s: float, tell: Callable[[str], None]) -> None:
    """Wait until the application runs, telling each replica that becomes ready.

    Raises:
        ClipSegError: a replica failed (its one-line error), or the application did not run within ``timeout_s``
            (Ray's reason, from serve.status()).
    """
    end, told = time.monotonic() + timeout_s, 0
    while True:
        found = serve.status().applications.get(APP_NAME)
        state = found.status if found else ApplicationStatus.NOT_STARTED
        if state == ApplicationStatus.RUNNING:
            return
        if state in (ApplicationStatus.DEPLOY_FAILED, ApplicationStatus.UNHEALTHY):
            raise ClipSegError(_replica_error(found.message))
        ready = sum(deployment.replica_states.get(ReplicaState.RUNNING, 0)
                    for deployment in (found.deployments.values() if found else ()))
        if told < ready < wanted:
            tell(f"{ready} of {wanted} replica(s) ready")
            told = ready
        if time.monotonic() >= end:
            reasons = [found.message] if found else []
            reasons += [d.message for d in (found.deployments.values() if found else ()) if d.message]
            reason = "; ".join(reason.strip() for reason in reasons if reason.strip()) or \
                f"{ready} of {wanted} replica(s) running, the application is {state.value}"
            raise ClipSegError(f"serve --ray: the replicas did not start within {timeout_s:g} s (--ray-timeout): "
                               f"{reason}")
        time.sleep(POLL_S)


def _replica_error(text: str) -> str:
    """The one-line error a replica raised while loading (`LoadFailed`), else the first line of Ray's message."""
    deployments = getattr(serve.status().applications.get(APP_NAME), "deployments", {})
    text = "\n".join([text, *(deployment.message for deployment in deployments.values())])
    found = re.findall(rf"{LoadFailed.__name__}: (.+)", text)
    return found[-1].strip() if found else f"Ray Serve could not deploy clipseg: {text.strip().splitlines()[0]}"
