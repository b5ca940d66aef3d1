"""Run a batch on a Ray cluster: one Engine per Ray actor, results back in input order.

The driver (where ``clipseg batch --ray`` runs) collects the work items and names the outputs;
each actor loads the model once and runs our own Engine over chunks of items, with the same
settings, skipping and atomic writes as a run on one machine, so the files are byte for byte the
same. Actors read the inputs and write the outputs themselves: every node must see them at the
same paths (a local Ray, or a shared file system such as NFS or Lustre). For object stores, use
the Ray Data API in `clipseg_cli.scale.ray_data`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from clipseg_cli import LOGGER
from clipseg_cli.errors import ClipSegError
from clipseg_cli.predictor import ModelSpec
from clipseg_cli.run.inputs import WorkItem
from clipseg_cli.scale.ray_start import first_line, room, start_or_join

if TYPE_CHECKING:
    from clipseg_cli.run.job import Job, PathLike
    from clipseg_cli.run.targets import Result

LOG = logging.getLogger(LOGGER)

IN_FLIGHT = 2  # chunks queued per actor, so that none waits for the driver between chunks
MAX_BATCHES = 2  # model batches per chunk at most: a stopped run waits for the chunks in flight
_STOP_SECONDS = 300  # how long a stopped run waits for them at most
_AHEAD = 4  # finished chunks held for an earlier one, at most this many times the chunks in flight
# A lost actor (its node gone, its process killed for memory) is replaced by a new one, which is given its
# chunks again: they are redone whole (a write is atomic; what was written is skipped). We do not rely on
# Ray's own restart (ray-project/ray#53727). A chunk whose actor is lost more than this many times stops the run.
RESTARTS = 3


class _EngineActor:
    """One Engine in one Ray worker process (see `RayBatch`)."""

    def __init__(self, job: Job, model: ModelSpec, protected: list, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        try:
            segmenter = model.load(progress=False)
            self.engine, self.error = job.engine(segmenter, protected=protected, drop_unused_layers=True), None
        except ClipSegError as exc:  # reported by `ready`: a set-up error, exit code 2
            self.engine, self.error = None, str(exc)

    def ready(self) -> str | None:
        """Returns: the set-up error, or None once the model is loaded."""
        return self.error

    def process(self, items: list[WorkItem]) -> list[Result]:
        return list(self.engine.process(items))


@dataclass(frozen=True)
class RayPlace:
    """Where ``--ray`` runs a job (`clipseg_cli.run.job.Place`): address None starts a local Ray, ``auto`` joins
    this machine's cluster; actors None is one per GPU, else one per CPU; quiet keeps Ray's lines off stderr."""

    address: str | None = None
    actors: int | None = None
    quiet: bool = False

    def runner(self, job: Job, model: ModelSpec, items: Sequence[WorkItem], *, protected: Iterable[PathLike],
               progress: bool) -> tuple[RayBatch, str]:
        """The checkpoint is downloaded once, here (with a progress bar), then the actors load it.

        Returns:
            The RayBatch of the job's items, and a line saying what runs.
        """
        from clipseg_cli.checkpoints.loading import checkpoint_dir

        checkpoint_dir(model.name, offline=model.offline, revision=model.revision, progress=progress)
        runner = RayBatch(job, model, protected=[*(item.source for item in items), *protected],
                          address=self.address, actors=self.actors, quiet=self.quiet)
        return runner, f"Ray: {runner.describe()}, {len(items)} image(s)"


class RayBatch:
    """Runs an Engine per actor over chunks of work items on Ray, yielding results in input order."""

    def __init__(self, job: Job, model: ModelSpec | Mapping[str, object], *, protected: Iterable[PathLike] = (),
                 address: str | None = None, actors: int | None = None, quiet: bool = False) -> None:
        """Arguments:
        job: what to segment and write.
        model: the model each actor loads (a `ModelSpec`, or a dict
            of its fields). protected: files never written (the inputs).
        address: None starts a local Ray (or joins RAY_ADDRESS / a cluster `ray start` began here);
            ``auto`` joins this machine's cluster; else ``ray://host:10001`` or ``host:6379``.
        actors: how many (default: one per GPU when running on GPUs, else one per CPU). Each takes
            one GPU when the device is cuda, or auto and the cluster has GPUs.
        quiet: nothing of Ray's on stderr, not even its errors, and no line when an actor is replaced.
        """
        import ray

        model = model if isinstance(model, ModelSpec) else ModelSpec(**model)
        device = model.device
        begun = time.perf_counter()
        self.quiet = quiet
        self.started = not ray.is_initialized()
        self._muted = _mute_ray(quiet)
        if self.started:
            try:
                start_or_join(address, quiet=quiet)
            except ClipSegError:
                self._muted()
                raise
        resources, nodes = ray.cluster_resources(), ray.nodes()
        cpus, gpu_count = int(resources.get("CPU", 1)), int(resources.get("GPU", 0))
        self.gpus = device == "cuda" or (device == "auto" and gpu_count > 0)
        if self.gpus and gpu_count < 1:
            self._give_up()
            raise ClipSegError("--ray with --device cuda: the Ray cluster has no GPU; use --device cpu or auto")
        count = actors or (gpu_count if self.gpus else cpus)
        largest = max((int(node.get("Resources", {}).get("CPU", 0)) for node in nodes if node.get("Alive", True)),
                      default=1)  # an actor runs on one node: its share of the CPUs is at most one node's
        threads = 1 if self.gpus else max(1, min(cpus // count, largest))
        self._check_room(nodes, count, threads)
        self.batch_size = job.pipeline.batch_size or (16 if self.gpus else 4)
        remote = ray.remote(num_cpus=threads, num_gpus=1 if self.gpus else 0, max_restarts=0)(_EngineActor)
        shared = ray.put([os.fspath(path) for path in protected])  # sent once, not once per actor
        self._new_actor = lambda: remote.remote(job, model, shared, threads)
        self.actors = [self._new_actor() for _ in range(count)]
        self.threads = threads
        readies = [actor.ready.remote() for actor in self.actors]
        try:
            for index, ready in enumerate(readies):
                self.actors[index] = self._when_ready(self.actors[index], ready)
        except ClipSegError:
            self.close()
            raise
        self.startup = time.perf_counter() - begun  # Ray (when started here) and the actors' models
        self._pending: dict = {}  # object ref -> (chunk index, actor, chunk)
        self._losses: dict[int, int] = {}  # chunk index -> times its actor was lost
        self._finished: dict[int, list[Result]] = {}

    def _check_room(self, nodes: list, count: int, threads: int) -> None:
        """Refuse actors the cluster cannot all hold (Ray would wait for them for ever).

        Raises:
            ClipSegError: one line, what was asked and what the cluster has.
        """
        found = room(nodes, CPU=0 if self.gpus else threads, GPU=1 if self.gpus else 0)
        if found.fit >= count:
            return
        self._give_up()
        each = "1 GPU" if self.gpus else f"{threads} CPU"
        raise ClipSegError(f"--ray: {count} actor(s) of {each} do not fit in this Ray cluster ({found.has}: room for "
                           f"{found.fit}); lower --ray-actors")

    def _give_up(self) -> None:
        """Before any actor: leave Ray (stop the local one started here) and undo the muting."""
        import ray

        if self.started:
            ray.shutdown()
            self.started = False
        self._muted()

    def describe(self) -> str:
        """Returns: e.g. ``2 actor(s) x 1 CPU, ready in 6.2 s``, for --verbose."""
        return (f"{len(self.actors)} actor(s) x {'1 GPU' if self.gpus else f'{self.threads} CPU'}, "
                f"ready in {self.startup:.1f} s")

    def chunk_size(self, total: int) -> int:
        """Images per task: whole model batches, about 4 tasks per actor, at most `MAX_BATCHES` batches.

        Small enough that the actors finish together and a stopped run stops soon, large enough that
        each decodes ahead.
        """
        batches = total // (len(self.actors) * 4 * self.batch_size)
        return self.batch_size * max(1, min(MAX_BATCHES, batches))

    def process(self, items: Sequence[WorkItem]) -> Iterator[Result]:
        """Process the items on the actors; results come in input order as each chunk finishes.

        Returns:
            An iterator of one Result per (item, target).
        """
        import ray

        size = self.chunk_size(len(items))
        chunks = (list(items[start : start + size]) for start in range(0, len(items), size))
        free = [actor for _ in range(IN_FLIGHT) for actor in self.actors]
        window = _AHEAD * len(free)
        submitted = reported = 0
        try:
            while True:
                while free and submitted < reported + window:
                    chunk = next(chunks, None)
                    if chunk is None:
                        break
                    actor = free.pop(0)
                    self._pending[actor.process.remote(chunk)] = (submitted, actor, chunk)
                    submitted += 1
                if not self._pending:
                    return
                [ready], _ = ray.wait(list(self._pending), num_returns=1)
                index, actor, _ = self._pending[ready]
                try:
                    self._finished[index] = ray.get(ready)
                except ray.exceptions.RayActorError as exc:
                    new = self._replace(actor, exc)
                    free = [new if spare is actor else spare for spare in free]
                    continue
                del self._pending[ready]  # only now: a stop during ray.get leaves it to `unreported`
                free.append(actor)
                while reported in self._finished:
                    results = self._finished[reported]
                    while results:  # each leaves as it is yielded: `unreported` sees the rest
                        yield results.pop(0)
                    del self._finished[reported]
                    reported += 1
        finally:
            if not self._pending:
                self.close()

    def _replace(self, lost: object, exc: BaseException) -> object:
        """Start a new actor in place of a lost one and give it every chunk the lost one held.

        Returns:
            The new actor.

        Raises:
            ClipSegError: a chunk lost its actor more than `RESTARTS` times, or the new actor cannot start.
        """
        import ray

        held = {ref: entry for ref, entry in self._pending.items() if entry[1] is lost}
        for index, *_ in held.values():
            self._losses[index] = self._losses.get(index, 0) + 1
            if self._losses[index] > RESTARTS:
                raise ClipSegError(
                    f"Ray lost the actor of one chunk {self._losses[index]} times ({first_line(exc)}); the files "
                    "written so far are complete: rerun the same command to write the rest")
        with suppress(ray.exceptions.RayError):
            ray.kill(lost)
        self._tell(f"Ray lost an actor ({first_line(exc)}); a new one redoes its {len(held)} chunk(s)")
        try:
            actor = self._when_ready(self._new_actor())
        except ClipSegError as failed:
            raise ClipSegError(f"{failed}; the files written so far are complete: rerun the same command to write "
                               "the rest") from None
        self.actors[self.actors.index(lost)] = actor
        for ref, (index, _, chunk) in held.items():
            del self._pending[ref]
            self._pending[actor.process.remote(chunk)] = (index, actor, chunk)
        return actor

    def _when_ready(self, actor: object, ready: object = None) -> object:
        """Wait until an actor has loaded its model; one lost while it starts is replaced, `RESTARTS` times at most.

        Arguments:
            actor: the actor.
            ready: its `ready` call, when made already.

        Returns:
            The actor, or the one that replaced it.

        Raises:
            ClipSegError: the model cannot be loaded (a set-up error), or no actor could be started.
        """
        import ray

        for attempt in range(RESTARTS + 1):
            try:
                error = ray.get(ready if ready is not None else actor.ready.remote())
            except ray.exceptions.RayActorError as exc:
                if attempt == RESTARTS:
                    raise ClipSegError(f"Ray could not start an actor ({first_line(exc)})") from None
                self._tell(f"Ray lost an actor while it started ({first_line(exc)}); starting a new one")
                actor, ready = self._new_actor(), None
                continue
            except ray.exceptions.RayError as exc:
                raise ClipSegError(f"Ray could not start an actor ({first_line(exc)})") from None
            if error:
                raise ClipSegError(error)
            return actor
        raise AssertionError("unreachable")

    def _tell(self, message: str) -> None:
        """One line of the ``clipseg`` log (not when quiet)."""
        if not self.quiet:
            LOG.warning(message)

    def unreported(self) -> list[Result]:
        """After an interrupted `process`: let the actors finish the chunks they were given (at most
        `IN_FLIGHT` x `MAX_BATCHES` model batches each, nothing new is started), then give the results
        not yielded yet. Cancelling would be quicker, but would lose the report of files being written.

        Returns:
            Those results in input order.
        """
        import ray

        if self._pending:
            refs = list(self._pending)
            finished, _ = ray.wait(refs, num_returns=len(refs), timeout=_STOP_SECONDS)
            for ref in finished:
                with suppress(ray.exceptions.RayError):  # a chunk that failed: a rerun reports its files
                    self._finished[self._pending[ref][0]] = ray.get(ref)
            self._pending.clear()
            self.close()
        results = [result for index in sorted(self._finished) for result in self._finished[index]]
        self._finished.clear()
        return results

    def close(self) -> None:
        """Stop the actors, and the local Ray this runner started."""
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self.started:
            ray.shutdown()
            self.started = False
        self._muted()


def _mute_ray(quiet: bool) -> Callable[[], None]:
    """While we hold Ray: nothing of Ray's on stdout (its driver prints the raylet's errors there, e.g. on a
    lost worker, even with log_to_driver=False), and with ``quiet`` nothing of its Python loggers on stderr.

    Returns:
        What undoes it (call it once Ray is let go).
    """
    from ray._private import worker

    logger = logging.getLogger("ray")
    before = worker._worker_logs_enabled, logger.level
    worker._worker_logs_enabled = False  # the switch Ray's debugger uses: the raylet's errors stay in its log files
    if quiet:
        logger.setLevel(logging.CRITICAL)

    def undo() -> None:
        worker._worker_logs_enabled = before[0]
        logger.setLevel(before[1])

    return undo

