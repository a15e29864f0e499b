"""Concurrent requests for one model gathered into one batched call (dynamic micro-batching).

A constrained beam search over one query costs nearly as much as over sixteen: the encoder's and decoder's matrix
products are small, so per-call overhead dominates, and one batched forward pass fills the cores far better than
requests taking turns under a lock. A :class:`MicroBatcher` owns one worker thread per model. Request threads
:meth:`~MicroBatcher.submit` their work and wait; the worker takes the oldest waiting request, gathers the others
that arrive within ``max_wait_s`` (or are already queued because the previous batch was still running), up to
``max_batch``, and runs them as one call. Both bounds keep latency bounded: a request waits at most ``max_wait_s``
for company, and a batch never grows past ``max_batch``.

The worker starts with the first request and stops at :meth:`~MicroBatcher.close` (the server's shutdown); a request
after that starts a new one, so an application whose lifespan runs more than once (as test clients do) keeps
answering. Overload is refused, not queued without end: at most ``max_pending`` requests wait, and one more is
refused at once with :class:`Overloaded` (the API answers 503 and the client retries).
When the batched call fails, each request of
the batch is run again on its own, so one bad request fails alone instead of failing the requests batched with it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

Request = TypeVar("Request")
Result = TypeVar("Result")


class Overloaded(RuntimeError):
    """More requests are waiting than the batcher may hold."""


class Closed(RuntimeError):
    """The batcher was closed (the server is shutting down)."""


@dataclass
class _Pending(Generic[Request, Result]):
    request: Request
    future: Future[Result] = field(default_factory=Future)


_STOP = object()


@dataclass
class BatchStats:
    """What the worker has done so far: batches run and requests answered (for health and load tests)."""

    batches: int = 0
    requests: int = 0
    largest_batch: int = 0

    @property
    def mean_batch(self) -> float:
        return self.requests / self.batches if self.batches else 0.0


class MicroBatcher(Generic[Request, Result]):
    """Runs ``run(requests) -> results`` (one result per request, in order) on batches of concurrent requests."""

    def __init__(
        self,
        run: Callable[[Sequence[Request]], Sequence[Result]],
        *,
        max_batch: int,
        max_wait_s: float,
        max_pending: int,
        name: str = "batcher",
    ) -> None:
        if max_batch < 1 or max_pending < 1 or max_wait_s < 0:
            raise ValueError("max_batch and max_pending must be at least 1 and max_wait_s at least 0")
        self._run = run
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.name = name
        self._queue: queue.Queue[_Pending[Request, Result] | object] = queue.Queue(maxsize=max_pending)
        self.stats = BatchStats()
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None

    def _ensure_worker(self) -> None:
        with self._lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._serve, name=self.name, daemon=True)
                self._worker.start()

    def submit(self, request: Request) -> Result:
        """Run ``request`` in the next batch and return its result (or raise what running it raised)."""
        return self.submit_nowait(request).result()

    def submit_nowait(self, request: Request) -> Future[Result]:
        """Queue ``request`` for the next batch and return at once: the future holds its result (or what running it
        raised). A caller that needs two batchers' results submits to one this way and waits for it after the other.
        Raises :class:`Overloaded` at once when ``max_pending`` requests already wait."""
        pending: _Pending[Request, Result] = _Pending(request)
        try:
            self._queue.put_nowait(pending)
        except queue.Full:
            raise Overloaded(f"{self._queue.maxsize} requests are already waiting for this model") from None
        self._ensure_worker()
        return pending.future

    def close(self, timeout: float = 30.0) -> None:
        """Answer what is queued, then stop the worker. Requests that queue behind the stop get :class:`Closed`."""
        with self._lock:
            worker, self._worker = self._worker, None
        if worker is None or not worker.is_alive():
            return
        self._queue.put(_STOP)
        worker.join(timeout)

    # -- the worker ------------------------------------------------------------------------------------------------

    def _gather(self, first: _Pending[Request, Result]) -> tuple[list[_Pending[Request, Result]], bool]:
        batch = [first]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                # Requests that queued while the previous batch ran are taken at once; then wait for company
                # only until the first request has waited max_wait_s.
                item = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if item is _STOP:
                return batch, True
            batch.append(item)  # type: ignore[arg-type]
        return batch, False

    def _serve(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            batch, stopping = self._gather(first)  # type: ignore[arg-type]
            self._answer(batch)
            with self._lock:
                self.stats.batches += 1
                self.stats.requests += len(batch)
                self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        # Anything still queued after the stop marker is refused rather than left waiting forever.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                item.future.set_exception(Closed("the server is shutting down"))  # type: ignore[union-attr]

    def _answer(self, batch: list[_Pending[Request, Result]]) -> None:
        try:
            results = list(self._run([pending.request for pending in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} requests returned {len(results)} results")
        except Exception as exc:  # each request is retried alone, and gets its own outcome
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
                return
            failure = type(exc).__name__
            logger.warning("a batch of %d requests failed (%s); running each on its own", len(batch), failure)
            for pending in batch:
                self._answer([pending])
            return
        for pending, result in zip(batch, results, strict=True):
            pending.future.set_result(result)
