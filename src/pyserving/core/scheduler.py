"""RetryScheduler: runs callbacks after a delay on one timer thread; no thread sleeps a backoff."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger("pyserving.lifecycle")

Clock = Callable[[], float]


class ScheduledCall:
    """One pending callback; `cancel()` makes sure it does not run (if it has not started)."""

    __slots__ = ("cancelled", "due", "fn")

    def __init__(self, due: float, fn: Callable[[], None]) -> None:
        self.due = due
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        # A plain flag: the timer thread checks it just before running the call.
        self.cancelled = True


class RetryScheduler:
    """Calls each scheduled function once its delay has passed on `clock`.

    With `threaded=True` (the default) one daemon thread, started on the first `call_later`,
    sleeps until the next call is due and runs it; with `threaded=False` nothing runs until the
    owner calls `run_due()` (tests drive a fake clock this way).
    Thread-safety: every method may be called from any thread, including from a running call.
    Blocking: `call_later` and `cancel` never wait; a scheduled function must be short (the
    Manager's only hands a job to its load pool), since later calls wait for it.
    """

    def __init__(self, clock: Clock = time.monotonic, threaded: bool = True) -> None:
        self._clock = clock
        self._threaded = threaded
        self._cond = threading.Condition()  # guards _heap, _closed, _thread
        self._heap: list[tuple[float, int, ScheduledCall]] = []
        self._seq = itertools.count()
        self._closed = False
        self._thread: threading.Thread | None = None

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> ScheduledCall:
        """Run `fn` once `delay_s` seconds have passed; returns a handle to cancel it."""
        call = ScheduledCall(self._clock() + max(0.0, delay_s), fn)
        with self._cond:
            if self._closed:
                call.cancelled = True
                return call
            heapq.heappush(self._heap, (call.due, next(self._seq), call))
            if self._threaded and self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="pyserving-retry-timer", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()
        return call

    def pending(self) -> int:
        """How many calls are scheduled and not cancelled."""
        with self._cond:
            return sum(1 for _, _, call in self._heap if not call.cancelled)

    def run_due(self) -> int:
        """Run, on this thread, every call due by now; returns how many ran."""
        ran = 0
        while True:
            call = self._pop_due()
            if call is None:
                return ran
            self._run(call)
            ran += 1

    def close(self) -> None:
        """Drop every pending call and end the timer thread (a running call finishes)."""
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _pop_due(self) -> ScheduledCall | None:
        with self._cond:
            while self._heap and self._heap[0][2].cancelled:
                heapq.heappop(self._heap)
            if self._heap and self._heap[0][0] <= self._clock():
                return heapq.heappop(self._heap)[2]
            return None

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    while self._heap and self._heap[0][2].cancelled:
                        heapq.heappop(self._heap)
                    if not self._heap:
                        self._cond.wait()
                        continue
                    delay = self._heap[0][0] - self._clock()
                    if delay <= 0:
                        break
                    self._cond.wait(delay)
                if self._closed:
                    return
            self.run_due()

    @staticmethod
    def _run(call: ScheduledCall) -> None:
        if call.cancelled:
            return
        try:
            call.fn()
        except Exception:  # edge: one bad callback must not end the timer for every version
            logger.exception("scheduled lifecycle call failed")
