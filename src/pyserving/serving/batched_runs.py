"""BatchedRuns: the requests of models that batch, queued on the shared BatchScheduler.

`InferenceService.run` hands a validated request here when its model batches (and its signature
can be batched on dimension 0); every other request runs on its model's execution threads
(`serving/execution.py`) without coming here.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Protocol

import numpy as np

from pyserving.batching import BatchingOptions, BatchScheduler, BatchTask
from pyserving.core.handle import ServableHandle
from pyserving.core.ids import ServableRequest
from pyserving.errors import DeadlineExceeded, ServingError, Unavailable
from pyserving.serving import tracing
from pyserving.serving.execution import Executor
from pyserving.serving.version_stats import VersionStats

__all__ = ["BatchedRuns"]


class _Handles(Protocol):
    def get_handle(self, request: ServableRequest) -> ServableHandle: ...


class BatchedRuns:
    """Queues batched requests on one BatchScheduler for every model, made on first use.

    Thread-safety: `run` may be awaited concurrently on any event loop; `close` from any thread.
    Ownership: a request that gives up while its task is queued or in a running batch keeps its
    version referenced until the batch ran, so the version is never unloaded under it.
    Blocking: `run` never waits on another thread (it awaits its task's future); only
    `close(wait=True)` waits.
    Cancellation: a cancelled or expired task still queued is dropped by the scheduler; one in a
    running batch completes and its result is discarded.
    """

    def __init__(self, manager: _Handles, executor: Executor, on_leave: Callable[[], None]) -> None:
        """`on_leave` is called once for each request `run` took, when it leaves the queues
        (refused, or its batch ran): the caller's pending count."""
        self._manager = manager
        self._executor = executor
        self._on_leave = on_leave
        self._lock = threading.Lock()  # guards creating _scheduler, and _closed
        self._scheduler: BatchScheduler | None = None
        self._closed = False

    @property
    def scheduler(self) -> BatchScheduler | None:
        """The shared batch scheduler, once a batched request has made it."""
        return self._scheduler

    async def run(
        self,
        handle: ServableHandle,
        signature_name: str,
        inputs: dict[str, np.ndarray],
        deadline: float | None,
        batching: BatchingOptions,
        server: BatchingOptions,
        stats: VersionStats | None = None,
    ) -> dict[str, np.ndarray]:
        """The servable's outputs for `inputs`, run in a batch with `batching`'s options (the
        shared pool takes `server`'s thread settings when this request makes it); the batch
        thread counts its model call in `stats`. Raises Unavailable (queue full, closing),
        DeadlineExceeded, and what the batch raised."""
        span = tracing.current.get() if tracing.enabled else None
        queued_ns = time.time_ns() if span is not None else 0
        # id(servable) keeps a reloaded version (same id, new servable) off the old queue; the
        # queued tasks hold the servable, so its id cannot be reused while the queue has tasks.
        key = (handle.id, signature_name, id(handle.servable), batching)
        try:  # never waits
            task = BatchTask(handle.servable, signature_name, inputs, deadline)
            task.trace = span
            task.stats = stats
            self._scheduler_for(server).schedule_nowait(key, handle.id.name, batching, task)
        except BaseException:  # refused by the batch queue: full, task too large, closing
            self._on_leave()
            raise
        job = task.future
        job.add_done_callback(self._done)
        waiter = asyncio.wrap_future(job)
        try:
            if deadline is None:
                return await waiter
            return await asyncio.wait_for(waiter, deadline - time.monotonic())
        except TimeoutError:
            await self._keep_alive(handle, job)
            raise DeadlineExceeded("Deadline exceeded while the model was running") from None
        except asyncio.CancelledError:
            await self._keep_alive(handle, job)
            raise
        finally:
            if span is not None:
                span.add_batch(queued_ns, task.batch)

    def refuse_new(self) -> None:
        """Refuse the requests that would make the scheduler (the server is closing)."""
        with self._lock:
            self._closed = True

    def close(self, wait: bool = False, timeout_s: float | None = None) -> None:
        """Stop the batch threads (`refuse_new` too); batches already queued still run (their
        callers hold handles). With `wait`, waits (up to `timeout_s`) for them."""
        with self._lock:
            self._closed = True
            scheduler = self._scheduler
        if scheduler is not None:
            scheduler.close(wait=wait, timeout_s=timeout_s)

    def _scheduler_for(self, server: BatchingOptions) -> BatchScheduler:
        """The shared scheduler, made with `server`'s thread settings on first use."""
        scheduler = self._scheduler
        if scheduler is not None:
            return scheduler
        with self._lock:
            if self._closed:
                raise Unavailable("the server is shutting down")
            if self._scheduler is None:
                # One pool for every model: the server-wide thread settings (TF Serving).
                # A model with its own `instances:` runs at most that many batches at
                # once, so a slow or hung one leaves the other threads to the other models.
                threads = server.num_batch_threads
                executor = self._executor
                self._scheduler = BatchScheduler(
                    threads,
                    server.thread_pool_name,
                    concurrency=lambda model: executor.configured(model) or threads,
                )
            return self._scheduler

    def _done(self, _job: Future[dict[str, np.ndarray]]) -> None:
        self._on_leave()

    async def _keep_alive(self, handle: ServableHandle, job: Future[dict[str, np.ndarray]]) -> None:
        """Keep `handle`'s version referenced until `job`'s batch ran, after the caller
        releases it (its request has given up)."""
        if job.done():
            return
        try:
            extra = self._manager.get_handle(ServableRequest(handle.id.name, handle.id.version))
        except ServingError:
            await asyncio.wait([asyncio.wrap_future(job)])
            return
        job.add_done_callback(lambda _job: extra.release())
