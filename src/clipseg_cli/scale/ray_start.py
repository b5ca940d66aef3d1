"""Starting or joining Ray, one way for ``batch --ray`` and ``serve --ray``: a Ray we start is closed.

A local Ray that we start binds every socket to loopback: its node address is 127.0.0.1, so the GCS,
the raylet, the object manager, the workers, the dashboard agent and the metrics exporters all listen
on 127.0.0.1 (Ray's own single-machine mode, the one it uses on macOS and Windows), and the dashboard
is off. Nothing of it is reached from another machine. Listening beyond loopback is an explicit
choice: a cluster's address (``--ray-address``, ``RAY_ADDRESS``, a ``ray start`` cluster of this
machine), whose binding is the cluster's own.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import NamedTuple

from clipseg_cli.errors import ClipSegError

LOOPBACK = "127.0.0.1"
_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
# Ray's switch for its single-machine mode: every node address is loopback (read once, when Ray is imported)
_SINGLE_MACHINE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def joins_a_cluster(address: str | None) -> bool:
    """Whether ``ray.init(address)`` joins a running cluster rather than start a local Ray: an address given,
    or (for None) ``RAY_ADDRESS`` or a cluster that ``ray start`` began on this machine.

    Returns:
        True to join, False when a local Ray is started here.
    """
    if address == "local":
        return False
    if address is not None:
        return True
    from ray._private import services

    try:
        return services.canonicalize_bootstrap_address(None) is not None
    except (ConnectionError, ValueError, RuntimeError):  # a RAY_ADDRESS ray.init will refuse in its own words
        return True


def start_or_join(address: str | None = None, *, quiet: bool = False, **resources: float) -> bool:
    """``ray.init`` as clipseg calls it: a local Ray on loopback only (see the module), or ``address``'s cluster.

    Ray's handlers of SIGINT, SIGTERM and SIGHUP (they abort the process) are replaced by the ones before, so
    that a stop reaches clipseg as it does without Ray.

    Arguments:
        address: None starts a local Ray, or joins ``RAY_ADDRESS`` or this machine's ``ray start`` cluster;
            ``local`` always starts one; ``auto`` joins this machine's cluster; else ``ray://host:10001`` or
            ``host:6379``.
        quiet: nothing of Ray's logging on stderr, not even its errors.
        resources: what a local Ray offers, as ``ray.init`` takes it (``num_cpus=2``; default: the machine's).

    Returns:
        Whether a local Ray was started (then ``ray.shutdown()`` ends it), or a cluster joined.

    Raises:
        ClipSegError: Ray could not start, or the cluster could not be joined (one line).
    """
    import ray

    local = not joins_a_cluster(address)
    handlers = {signum: signal.getsignal(signum) for signum in _SIGNALS}
    try:
        with _loopback_only(local):
            ray.init(address="local" if local else address, include_dashboard=False, dashboard_host=LOOPBACK,
                     log_to_driver=False, logging_level=logging.CRITICAL if quiet else logging.ERROR,
                     configure_logging=True, **(resources if local else {}))
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise ClipSegError(f"--ray-address {address or '(local)'}: cannot start or join Ray "
                           f"({first_line(exc)}); check the address (ray status shows it) or leave it out for a "
                           "local Ray") from None
    finally:
        if threading.current_thread() is threading.main_thread():
            for signum, handler in handlers.items():
                if handler is not None:
                    signal.signal(signum, handler)
    return local


class Room(NamedTuple):
    """What a Ray cluster holds of one kind of actor: how many fit (each on one node), and what it has."""

    fit: float  # how many such actors the alive nodes hold at most (inf when they need nothing)
    has: str  # the cluster's resources of the kinds needed, e.g. ``2 CPU(s) on 1 node(s)``


def room(nodes: Sequence[Mapping], **needs: float) -> Room:
    """How many actors that each need ``needs`` (``CPU=4, GPU=1``; zeros are left out) the cluster holds, before
    any is created: Ray would otherwise wait, silently and for ever, for resources that never come.

    Arguments:
        nodes: ``ray.nodes()`` (each with ``Alive`` and ``Resources``).
        needs: what one actor reserves, by Ray's resource names.

    Returns:
        The Room.
    """
    alive = [node.get("Resources", {}) for node in nodes if node.get("Alive", True)]
    needs = {name: need for name, need in needs.items() if need > 0}
    fit = sum(min((math.floor(resources.get(name, 0.0) / need + 1e-9) for name, need in needs.items()),
                  default=math.inf) for resources in alive)
    has = " and ".join(f"{sum(resources.get(name, 0.0) for resources in alive):g} {name}(s)" for name in needs)
    return Room(fit, f"{has or 'nothing asked'} on {len(alive)} node(s)")


@contextmanager
def _loopback_only(local: bool) -> Iterator[None]:
    """While a local Ray starts: its node address is loopback (Ray's single-machine mode), in this process and
    in every process it starts (they inherit the environment); undone afterwards."""
    if not local:
        yield
        return
    from ray._private import ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER, os.environ.get(_SINGLE_MACHINE)
    ray_constants.ENABLE_RAY_CLUSTER = False
    os.environ[_SINGLE_MACHINE] = "0"
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before[0]
        if before[1] is None:
            os.environ.pop(_SINGLE_MACHINE, None)
        else:
            os.environ[_SINGLE_MACHINE] = before[1]


def first_line(exc: BaseException) -> str:
    """Returns: the first line of an exception's message (Ray's run over many lines)."""
    lines = str(exc).strip().splitlines()
    return lines[0].rstrip(".") if lines else type(exc).__name__
