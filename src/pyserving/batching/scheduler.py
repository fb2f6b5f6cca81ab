"""BatchScheduler: one pool of batch threads shared by all batch queues (TF SharedBatchScheduler).

Each thread visits the queues round-robin and takes at most one batch per visit, so a busy model
cannot starve another; with `concurrency`, a model runs at most that many batches at once (its
`instances:`), so a slow or hung model holds at most that many of the shared threads. A batch
never mixes queues: one queue per loaded version and signature (and batching options). A queue
left empty for `idle_queue_s` is forgotten; the next task for it makes a new one. A version
unloads only after its requests released their handles, and a request holds its handle until its
task's result is back, so a version's queue is drained before it unloads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from pyserving.batching.merge import merge_inputs, split_outputs
from pyserving.batching.options import BatchingOptions
from pyserving.batching.queue import Batch, BatchQueue, BatchRecord, BatchTask
from pyserving.errors import ModelError, ServingError, Unavailable
from pyserving.platforms.servable import call_servable

__all__ = ["BatchScheduler", "SchedulerStatistics"]

logger = logging.getLogger("pyserving.batching")


@dataclass(frozen=True, slots=True)
class SchedulerStatistics:
    """A snapshot of the scheduler: queues, what waits in them, and what has run."""

    #: queues that exist (idle ones are forgotten after `idle_queue_s`)
    queues: int
    #: batches waiting across all queues, the open ones included
    enqueued_batches: int
    #: tasks waiting across all queues (a split task counts once per waiting part)
    enqueued_tasks: int
    #: batches handed to a thread since the start
    batches_run: int
    #: task parts dropped before execution: cancelled by the caller or past their deadline
    tasks_dropped: int


class BatchScheduler:
    """Shared batch threads that run batches from many queues, round-robin.

    Thread-safety: `schedule_nowait`, `statistics` and `close` may be called from any thread.
    Blocking: `schedule_nowait` never waits (it takes one short lock and refuses at once when a
    queue is full); `close(wait=True)` waits for the threads to run what is queued and exit.
    Cancellation: a task whose future is cancelled, or whose deadline has passed, before its
    batch runs is dropped (no model call for it); a batch that started runs to completion.
    Ownership: the scheduler owns its threads; tasks keep their servable alive, the caller keeps
    the version loaded (its handle) until the task's future is done.
    """

    def __init__(
        self,
        num_batch_threads: int,
        thread_pool_name: str = "batch_threads",
        idle_queue_s: float = 60.0,
        concurrency: Callable[[str], int] | None = None,
    ) -> None:
        self.num_batch_threads = max(1, num_batch_threads)
        # model name → the most batches of it that may run at once (None: no bound of its own)
        self._concurrency = concurrency
        self.thread_pool_name = thread_pool_name
        self._idle_queue_s = idle_queue_s
        # guards every field below and every queue's batches
        self._cond = threading.Condition(threading.Lock())
        self._queues: dict[Hashable, BatchQueue] = {}
        self._order: list[Hashable] = []  # round-robin order of _queues' keys
        self._cursor = 0
        self._threads: list[threading.Thread] = []
        self._closing = False
        self._batches_run = 0
        self._tasks_dropped = 0
        self._next_eviction = 0.0
        self._running: dict[str, int] = {}  # model → batches of it running now

    def schedule_nowait(
        self, queue_key: Hashable, model: str, options: BatchingOptions, task: BatchTask
    ) -> Future[dict[str, np.ndarray]]:
        """Enqueue `task` on the queue for `queue_key` (made on first use); returns its future.

        Raises InvalidInput (task over max_batch_size), Unavailable (queue full, or closing).
        """
        with self._cond:
            if self._closing:
                raise Unavailable("the server is shutting down")
            now = time.monotonic()
            queue = self._queues.get(queue_key)
            if queue is None:
                queue = BatchQueue(model, options, now)
                self._queues[queue_key] = queue
                self._order.append(queue_key)
            queue.schedule_locked(task, now)
            if not self._threads:
                self._start_threads_locked()
            self._cond.notify()
        return task.future

    def statistics(self) -> SchedulerStatistics:
        with self._cond:
            return SchedulerStatistics(
                queues=len(self._queues),
                enqueued_batches=sum(q.num_batches for q in self._queues.values()),
                enqueued_tasks=sum(q.num_tasks_locked() for q in self._queues.values()),
                batches_run=self._batches_run,
                tasks_dropped=self._tasks_dropped,
            )

    def close(self, wait: bool = True, timeout_s: float | None = None) -> None:
        """Refuse new tasks; the threads run every queued batch, then exit (joined with `wait`)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            threads = list(self._threads)
        if wait:
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            for thread in threads:
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    # --- batch threads ----------------------------------------------------------------------

    def _start_threads_locked(self) -> None:
        for i in range(self.num_batch_threads):
            thread = threading.Thread(
                target=self._work, name=f"{self.thread_pool_name}-{i}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def _work(self) -> None:
        while True:
            with self._cond:
                while True:
                    now = time.monotonic()
                    found = self._next_batch_locked(now)
                    if found is not None:
                        if any(q.num_batches for q in self._queues.values()):
                            self._cond.notify()  # more may be ready: wake another thread
                        break
                    if self._closing:
                        return
                    wakeup = self._wakeup_at_locked()
                    if now >= self._next_eviction:
                        self._evict_idle_locked(now)
                    self._cond.wait(None if wakeup is None else max(0.0, wakeup - now))
            queue, batch = found
            started = time.monotonic()
            ran = False
            try:
                ran = self._run(queue, batch)
            except BaseException:  # a bug here must not kill the pool or strand callers
                logger.exception("batch scheduler: unexpected error running a batch")
                error = ModelError("internal error in the batch scheduler")
                for task, _, _ in batch.slices:
                    task.fail(error)
            finally:
                ended = time.monotonic()
                with self._cond:
                    if ran:
                        queue.ran_locked(batch.size, ended - started, ended)
                    running = self._running[queue.model] - 1
                    if running:
                        self._running[queue.model] = running
                    else:
                        del self._running[queue.model]
                    self._cond.notify()  # its next batch may run now

    def _next_batch_locked(self, now: float) -> tuple[BatchQueue, Batch] | None:
        order = self._order
        n = len(order)
        for i in range(n):
            index = (self._cursor + i) % n
            queue = self._queues[order[index]]
            if self._at_bound_locked(queue.model):
                continue
            model_idle = queue.model not in self._running
            batch = queue.take_ready_locked(now, self._closing, model_idle)
            if batch is not None:
                self._cursor = index + 1
                self._batches_run += 1
                self._running[queue.model] = self._running.get(queue.model, 0) + 1
                return queue, batch
        return None

    def _at_bound_locked(self, model: str) -> bool:
        """`model` runs as many batches as it may; the end of one of them notifies."""
        bound = self._concurrency
        return bound is not None and self._running.get(model, 0) >= bound(model)

    def _wakeup_at_locked(self) -> float | None:
        times = [
            t
            for q in self._queues.values()
            if not self._at_bound_locked(q.model)
            and (t := q.wakeup_at_locked(q.model not in self._running)) is not None
        ]
        return min(times) if times else None

    def _evict_idle_locked(self, now: float) -> None:
        self._next_eviction = now + self._idle_queue_s
        stale = [
            key
            for key, q in self._queues.items()
            if not q.num_batches and now - q.idle_since >= self._idle_queue_s
        ]
        for key in stale:
            del self._queues[key]
        if stale:
            self._order = [key for key in self._order if key in self._queues]
            self._cursor = 0

    def _run(self, queue: BatchQueue, batch: Batch) -> bool:
        """Run `batch`'s live tasks in one model call; False when none was left to run."""
        now = time.monotonic()
        live: list[tuple[BatchTask, int, int]] = []
        waited = 0.0  # the live tasks' time in the batch queue (for their version's statistics)
        for task, start, stop in batch.slices:
            if task.claim(now):
                live.append((task, start, stop))
                if start == 0:
                    queue.queue_durations.observe(now - task.enqueued_at)
                    waited += now - task.enqueued_at
        if len(live) < len(batch.slices):
            with self._cond:
                self._tasks_dropped += len(batch.slices) - len(live)
        if not live:
            return False
        rows = sum(stop - start for _, start, stop in live)
        padded = queue.options.padded_size(rows) if rows else 0
        first = live[0][0]
        traces = [task.trace for task, _, _ in live if task.trace is not None]
        record = BatchRecord(queue.model, padded, traces) if traces else None
        if record is not None:
            for task, _, _ in live:
                if task.trace is not None:
                    task.batch = record
        try:
            merging = time.perf_counter_ns()
            inputs = merge_inputs(
                [(task.inputs, start, stop) for task, start, stop in live],
                padded,
                queue.options.pad_variable_length_inputs,
            )
            calling = time.perf_counter_ns()
            outputs = call_servable(first.servable, first.signature_name, inputs)
            splitting = time.perf_counter_ns()
            pieces = split_outputs(outputs, [stop - start for _, start, stop in live], padded)
            ended = time.perf_counter_ns()
        except ServingError as exc:
            if record is not None:
                record.ended_ns = time.time_ns()
            for task, _, _ in live:
                task.fail(exc)
            return True
        if record is not None:  # before the futures complete: their requests read it
            record.ended_ns = time.time_ns()
        queue.batch_sizes.observe(padded)
        stats = first.stats  # one version's: the queue's key names it
        if stats is not None:
            timings = (calling - merging, splitting - calling, ended - splitting)
            stats.called(len(live), rows, int(waited * 1e9), *timings)
            stats.batch_called(padded, *timings)
        for (task, start, stop), piece in zip(live, pieces, strict=True):
            task.part_done(start, stop, piece)
        return True
