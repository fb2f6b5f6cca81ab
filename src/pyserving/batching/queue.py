"""BatchQueue: one bounded queue of batches per version and signature, and the tasks it holds.

A queue is a deque of batches of which only the last is open (TF Serving's shared batch
scheduler). A task that does not fit the open batch closes it and opens a new one; when the queue
already holds `max_enqueued_batches` batches the task is refused at once (Unavailable). With
`enable_large_batch_splitting` a task is cut to fill the open batch and then new batches of
`max_execution_batch_size` rows; its parts are reassembled in order when all have run.

With `batch_wait: adaptive` an open batch runs before its timeout when waiting cannot pay
(`adaptive_wait.AdaptiveWait` measures and decides); with `timeout` it waits out its timeout
unless full, as TF Serving's shared batch scheduler does.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Hashable
from concurrent.futures import Future
from typing import Any

import numpy as np

from pyserving.batching.adaptive_wait import AdaptiveWait
from pyserving.batching.merge import Tensors, concatenate_parts, shape_key, task_size
from pyserving.batching.options import BatchingOptions
from pyserving.errors import DeadlineExceeded, InvalidInput, Unavailable
from pyserving.metrics import BATCH_SIZE, QUEUE_DURATION

__all__ = ["QUEUE_FULL_MESSAGE", "BatchQueue", "BatchRecord", "BatchTask"]

#: TF Serving's text for a full queue (newer TF appends the sizes, as we do)
QUEUE_FULL_MESSAGE = "The batch scheduling queue to which this task was submitted is full"


class BatchTask:
    """One caller's request: its inputs, deadline, servable and the future its outputs go to.

    Thread-safety: created on the caller's thread; after scheduling only batch threads touch it;
    `claim` and `part_done` take the task's lock (two parts may run on two threads).
    Cancellation: cancelling `future` before the task's first part runs drops the task; after that
    its parts still run and the result is discarded.
    """

    __slots__ = (
        "_lock",
        "_parts",
        "_rows_done",
        "batch",
        "deadline",
        "enqueued_at",
        "future",
        "inputs",
        "servable",
        "signature_name",
        "size",
        "started",
        "stats",
        "trace",
    )

    def __init__(
        self,
        servable: Any,
        signature_name: str,
        inputs: Tensors,
        deadline: float | None = None,
    ) -> None:
        self.servable = servable
        self.signature_name = signature_name
        self.inputs = inputs
        self.size = task_size(inputs)
        self.deadline = deadline
        self.future: Future[dict[str, np.ndarray]] = Future()
        self.enqueued_at = 0.0
        self._lock = threading.Lock()  # guards started, _parts and _rows_done
        self.started = False  # set by the batch thread that first claims the task
        self._parts: dict[int, Tensors] = {}
        self._rows_done = 0
        #: the caller's request span (serving.tracing), or None: only then is `batch` recorded
        self.trace: object | None = None
        #: the batch this task (its last part) ran in, recorded while traced
        self.batch: BatchRecord | None = None
        #: its version's statistics (serving.version_stats.VersionStats), counted by the batch
        #: thread; None: not counted
        self.stats: Any = None

    def claim(self, now: float) -> bool:
        """Called by a batch thread before running rows of this task; False: drop them.

        The first claim marks the future running (False if the caller cancelled it) and fails
        the task with DeadlineExceeded when its deadline has passed. Later claims (other parts of
        a split task, maybe on another thread) only check the task has not already failed.
        """
        with self._lock:
            if self.started:
                return not self.future.done()
            self.started = True
            if not self.future.set_running_or_notify_cancel():
                return False
        if self.deadline is not None and now >= self.deadline:
            self.fail(
                DeadlineExceeded("Deadline exceeded while the request waited in the batch queue")
            )
            return False
        return True

    def part_done(self, start: int, stop: int, outputs: Tensors) -> None:
        """Record the outputs of rows start..stop; the last part completes the future, in order."""
        if start == 0 and stop == self.size:
            self._finish(dict(outputs))
            return
        with self._lock:
            self._parts[start] = outputs
            self._rows_done += stop - start
            if self._rows_done < self.size:
                return
            parts = [self._parts[k] for k in sorted(self._parts)]
        self._finish(concatenate_parts(parts))

    def fail(self, error: BaseException) -> None:
        """Complete the task with `error` unless it is already complete."""
        with self._lock:  # parts failing on two threads must not both set the future
            if not self.future.done():
                self.future.set_exception(error)

    def _finish(self, outputs: dict[str, np.ndarray]) -> None:
        with self._lock:
            if not self.future.done():
                self.future.set_result(outputs)


class BatchRecord:
    """What a trace needs of one batch that ran traced tasks: when, how large, whose.

    Thread-safety: the batch thread writes the times before the tasks' futures complete; the
    requests read them after. `lock` guards `span_context`, set once by the first request
    that makes the batch's span (serving.tracing)."""

    __slots__ = ("ended_ns", "lock", "model", "size", "span_context", "started_ns", "traces")

    def __init__(self, model: str, size: int, traces: list[object]) -> None:
        self.model = model
        self.size = size
        #: the traced tasks' request spans, in batch order
        self.traces = traces
        self.started_ns = time.time_ns()
        self.ended_ns = 0
        self.lock = threading.Lock()
        self.span_context: object | None = None


class Batch:
    """Rows from one or more tasks of one queue that run as one model call."""

    __slots__ = ("closed", "key", "opened_at", "size", "slices")

    def __init__(self, key: Hashable, opened_at: float) -> None:
        #: (task, first row, end row) in the order the rows were enqueued
        self.slices: list[tuple[BatchTask, int, int]] = []
        self.size = 0
        self.key = key
        self.opened_at = opened_at
        self.closed = False

    def add(self, task: BatchTask, start: int, stop: int) -> None:
        self.slices.append((task, start, stop))
        self.size += stop - start


class BatchQueue:
    """The batches waiting for one version and signature; one model's options.

    Thread-safety: every method ending in `_locked` must be called with the scheduler's lock
    held; the scheduler owns that lock and the queue.
    Blocking: nothing here waits.
    """

    __slots__ = (
        "_batches",
        "_wait",
        "batch_sizes",
        "idle_since",
        "model",
        "options",
        "queue_durations",
    )

    def __init__(self, model: str, options: BatchingOptions, now: float) -> None:
        self.model = model
        self.options = options
        # metric children bound once per queue (observed by the batch threads)
        self.batch_sizes = BATCH_SIZE.labels(model)
        self.queue_durations = QUEUE_DURATION.labels(model)
        self._batches: deque[Batch] = deque()
        #: when the queue last became empty (the scheduler forgets long-idle queues)
        self.idle_since = now
        self._wait = (
            AdaptiveWait(options.batch_timeout_s) if options.batch_wait == "adaptive" else None
        )

    @property
    def num_batches(self) -> int:
        return len(self._batches)

    def num_tasks_locked(self) -> int:
        return sum(len(batch.slices) for batch in self._batches)

    def schedule_locked(self, task: BatchTask, now: float) -> None:
        """Add `task`'s rows to the open batch, closing it and opening more as needed.

        Raises InvalidInput for a task over max_batch_size, Unavailable when the queue is full.
        """
        options = self.options
        size = task.size
        if size > options.max_batch_size:
            raise InvalidInput(
                f"Task size {size} is larger than maximum batch size {options.max_batch_size}"
            )
        capacity = options.execution_batch_size
        # Without padding, tasks whose rows differ in shape never share a batch.
        key = None if options.pad_variable_length_inputs else shape_key(task.inputs)
        batches = self._batches
        open_batch = batches[-1] if batches and not batches[-1].closed else None
        room = capacity - open_batch.size if open_batch and open_batch.key == key else 0
        free_batches = options.max_enqueued_batches - len(batches)
        if options.enable_large_batch_splitting:
            fits = size <= room + free_batches * capacity
        else:
            fits = size <= room or free_batches > 0
        if not fits:
            raise Unavailable(
                f"{QUEUE_FULL_MESSAGE}; task size is {size} but scheduling capacity is only"
                f" {room + max(free_batches, 0) * capacity}"
            )
        task.enqueued_at = now
        if self._wait is not None:
            self._wait.arrived(now, size)
        if not options.enable_large_batch_splitting or size <= room:
            if size > room or open_batch is None or open_batch.key != key:
                self._close_open_locked()
                open_batch = Batch(key, now)
                batches.append(open_batch)
            open_batch.add(task, 0, size)
            return
        start = 0
        if room > 0 and open_batch is not None:
            open_batch.add(task, 0, room)
            start = room
        self._close_open_locked()
        while start < size:
            stop = min(size, start + capacity)
            batch = Batch(key, now)
            batch.add(task, start, stop)
            batch.closed = stop - start >= capacity
            batches.append(batch)
            start = stop

    def take_ready_locked(self, now: float, flush: bool, model_idle: bool) -> Batch | None:
        """Remove and return the front batch if it may run now (`flush`: run open ones too;
        `model_idle`: no batch of this queue's model is running)."""
        if not self._batches:
            return None
        front = self._batches[0]
        timeout_at = front.opened_at + self.options.batch_timeout_s
        if (
            front.closed
            or flush
            or front.size >= self.options.execution_batch_size
            or now >= timeout_at
            or (self._wait is not None and self._wait.runs_now(front.size, now, model_idle))
        ):
            self._batches.popleft()
            if not self._batches:
                self.idle_since = now
            return front
        return None

    def wakeup_at_locked(self, model_idle: bool) -> float | None:
        """When the open front batch must be looked at again: its timeout, or sooner when the
        adaptive wait may stop waiting (`model_idle`: no batch of this queue's model runs)."""
        if not self._batches or self._batches[0].closed:
            return None
        timeout_at = self._batches[0].opened_at + self.options.batch_timeout_s
        return timeout_at if self._wait is None else self._wait.wakeup_at(timeout_at, model_idle)

    def ran_locked(self, rows: int, seconds: float, ended_at: float) -> None:
        """A batch of `rows` rows of this queue ran for `seconds` (the adaptive wait learns)."""
        if self._wait is not None:
            waiting = sum(batch.size for batch in self._batches)
            self._wait.ran(seconds, ended_at, rows, waiting)

    def _close_open_locked(self) -> None:
        if self._batches:
            self._batches[-1].closed = True
