"""The micro-batcher: requests that arrive together run in one model call, on one model thread.

Requests wait in a bounded queue; the model thread takes the first, waits up to ``wait_s`` for
more (at most ``batch_size``), and runs each group of requests with the same options as one Job,
their images batched. A full queue refuses at once (`QueueFull`: the server says 503); a request
cancelled while it waits (its client went away) leaves the queue and frees its place.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

Run = Callable[[Any, Sequence[Any]], list[Any]]  # (job, uploads) -> one answer per upload


class QueueFull(Exception):
    """Every place in the queue is taken."""


@dataclass
class _Request:
    job: Hashable
    upload: Any
    future: Future = field(default_factory=Future)


class MicroBatcher:
    """Admits at most ``max_queue`` requests (waiting or running) and runs them in batches on one thread."""

    def __init__(self, run: Run, *, max_queue: int, batch_size: int, wait_s: float,
                 observe: Callable[[int, float], None] = lambda size, seconds: None) -> None:
        """Arguments:
        run: runs one job on several uploads (`clipseg_cli.serve.library.run_job` with the model bound).
        observe: called after each model call with its number of requests and its seconds.
        """
        self._run = run
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.wait_s = wait_s
        self._observe = observe
        self._waiting: queue.Queue[_Request | None] = queue.Queue()
        self._admitted = 0
        self.running = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="clipseg-model", daemon=True)

    @property
    def depth(self) -> int:
        """Requests admitted and not yet taken by the model thread."""
        return self._admitted - self.running

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish what is queued, then end the model thread."""
        self._waiting.put(None)
        self._thread.join()

    def submit(self, job: Hashable, upload: Any) -> Future:
        """Queue one upload; the future gets its answer (or the exception that ``run`` raised).

        Raises:
            QueueFull: ``max_queue`` requests are admitted already.
        """
        with self._lock:
            if self._admitted >= self.max_queue:
                raise QueueFull
            self._admitted += 1
        request = _Request(job, upload)
        request.future.add_done_callback(self._release)
        self._waiting.put(request)
        return request.future

    def _release(self, future: Future) -> None:
        with self._lock:
            self._admitted -= 1

    def _loop(self) -> None:
        while True:
            batch, last = self._take()
            if batch:
                self._run_batch(batch)
            if last:
                return

    def _take(self) -> tuple[list[_Request], bool]:
        """The next batch: the first request, and those arriving within ``wait_s`` (cancelled ones dropped).

        Returns:
            (requests, whether the end was asked).
        """
        first = self._waiting.get()
        if first is None:
            return [], True
        batch, deadline = [first], time.monotonic() + self.wait_s
        while len(batch) < self.batch_size:
            try:
                request = self._waiting.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if request is None:
                self._waiting.put(None)  # end after this batch
                break
            batch.append(request)
        return [r for r in batch if r.future.set_running_or_notify_cancel()], False

    def _run_batch(self, batch: list[_Request]) -> None:
        """Run each group of requests with the same job as one call, in arrival order."""
        groups: dict[Hashable, list[_Request]] = {}
        for request in batch:
            groups.setdefault(request.job, []).append(request)
        with self._lock:
            self.running += len(batch)
        for job, requests in groups.items():
            start = time.perf_counter()
            try:
                answers, error = self._run(job, [r.upload for r in requests]), None
                self._observe(len(requests), time.perf_counter() - start)
            except Exception as exc:  # the server answers 500 with one line; the thread lives on
                answers, error = [None] * len(requests), exc
            with self._lock:
                self.running -= len(requests)
            for request, answer in zip(requests, answers, strict=True):
                if error is None:
                    request.future.set_result(answer)
                else:
                    request.future.set_exception(error)
