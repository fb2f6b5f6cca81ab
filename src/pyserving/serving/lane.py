"""Lane: a bounded set of daemon threads and a bounded queue that run calls for an event loop.

The executor gives each model one lane; the codec threads of `run_off_loop` are one more.

- **Deadlines and abandonment**: a request whose deadline passes gets DeadlineExceeded on time
  (`Call.result`), whether its call is queued or running; a cancelled request (client gone,
  server stopping) is dropped the same way. `Call.abandon` then removes a queued call at once.
  A running call cannot be stopped (Python has no safe way to stop a thread): it keeps its
  thread until it returns and is counted as *stuck*; no replacement thread is started, so a
  lane never has more than `instances` threads. A lane whose every thread is stuck says why
  (`Lane.stuck_reason`).
- **The hand-off** is a deque and a parked-thread lock per lane (no `concurrent.futures`
  objects); results return through one mailbox per event loop, which wakes the loop with a
  single `call_soon_threadsafe` for every result that arrives before the loop drains it.
- Every thread is a daemon thread: a call that never returns cannot keep the process alive at
  exit (SIGTERM is bounded by the drain timeout, not by the slowest model).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from pyserving.errors import DeadlineExceeded, Unavailable

__all__ = ["IDLE_EXIT_S", "Call", "Lane"]

logger = logging.getLogger("pyserving.execution")

T = TypeVar("T")

#: a lane thread with nothing to do for this long exits (the next call starts one)
IDLE_EXIT_S = 60.0

# Call states; changed only under the owning lane's lock.
_QUEUED, _RUNNING, _ABANDONED, _DONE = range(4)


class _Mailbox:
    """Results from worker threads to one event loop, delivered in batches.

    Thread-safety: `post` may be called from any thread; `_drain` runs on the loop.
    Blocking: never waits beyond one short lock.
    """

    __slots__ = ("__weakref__", "_items", "_lock", "_loop", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()  # guards _items and _scheduled
        self._items: list[tuple[asyncio.Future[Any], bool, Any]] = []
        self._scheduled = False

    def post(self, future: asyncio.Future[Any], ok: bool, value: Any) -> None:
        with self._lock:
            self._items.append((future, ok, value))
            if self._scheduled:
                return  # a drain is already on its way: it takes this result too
            self._scheduled = True
        # RuntimeError: the loop is closed, and nobody waits for this result any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            items, self._items = self._items, []
            self._scheduled = False
        for future, ok, value in items:
            if future.done():  # its request gave up (deadline, cancellation)
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)


_mailboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Mailbox] = (
    weakref.WeakKeyDictionary()
)


#: the last loop's mailbox (a server has one loop: this skips the weak-dict lookup); a tuple,
#: replaced whole, so a reader on another loop's thread never sees a torn pair
_last: tuple[asyncio.AbstractEventLoop | None, _Mailbox | None] = (None, None)


def _mailbox(loop: asyncio.AbstractEventLoop) -> _Mailbox:
    global _last
    last_loop, mailbox = _last
    if last_loop is loop and mailbox is not None:
        return mailbox
    mailbox = _mailboxes.get(loop)
    if mailbox is None:
        mailbox = _mailboxes.setdefault(loop, _Mailbox(loop))
    _last = (loop, mailbox)
    return mailbox


class Call(Generic[T]):
    """One call handed to a lane: `fn(*args)`, its result future on the submitting loop.

    Thread-safety: `state` and `_on_return` belong to the lane's lock; `future` to its loop.
    """

    __slots__ = ("_on_return", "args", "fn", "future", "lane", "mailbox", "started", "state")

    def __init__(
        self,
        lane: Lane,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.lane = lane
        self.fn: Callable[..., T] | None = fn
        self.args: tuple[Any, ...] | None = args
        self.future: asyncio.Future[T] = loop.create_future()
        self.mailbox = _mailbox(loop)
        self.state = _QUEUED
        self.started = 0.0
        self._on_return: list[Callable[[], object]] | None = None

    async def result(self, deadline: float | None = None) -> T:
        """The call's result; DeadlineExceeded at `deadline` (a `time.monotonic()` instant).

        On any exception (deadline, cancellation, the call's own error) the caller should call
        `abandon()` to take the call off the queue or mark it stuck.
        """
        future = self.future
        if deadline is None:
            return await future
        timer = future.get_loop().call_later(max(0.0, deadline - time.monotonic()), self._expire)
        try:
            return await future
        finally:
            timer.cancel()

    def _expire(self) -> None:
        if self.future.done():
            return
        where = "was queued" if self.state == _QUEUED else "was running"
        self.future.set_exception(
            DeadlineExceeded(f"Deadline exceeded while the model call {where}")
        )

    def abandon(self) -> bool:
        """The request no longer waits for this call. Returns True when the call is running
        (its thread stays busy until it returns: see `when_returned`)."""
        return self.lane.abandon(self)

    def when_returned(self, callback: Callable[[], object]) -> bool:
        """Run `callback` (on the call's thread) once the call returns; False, without calling
        it, when the call has already returned or was dropped."""
        return self.lane.when_returned(self, callback)


class Lane:
    """Bounded threads and a bounded queue that run calls: one model's, or the codec threads.

    Thread-safety: every method may be called from any thread; all fields are guarded by `_lock`.
    Blocking: `submit`, `abandon`, `when_returned` never wait beyond that lock.
    Ownership: the lane owns its threads (daemon threads, started on demand, at most
    `instances` of them alive, stuck ones included); a call owns its arguments until it runs.
    """

    def __init__(
        self,
        name: str,
        instances: int,
        max_queued: int,
        on_leave: Callable[[], None] | None,
    ) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._instances = max(1, instances)
        self._max_queued = max_queued
        self._on_leave = on_leave  # called once per call when it leaves (returned or removed)
        self._queue: deque[Call[Any]] = deque()
        self._parked: list[threading.Lock] = []  # each idle thread waits on its own lock
        self._threads: list[threading.Thread] = []  # alive, stuck ones included
        self._stuck: set[Call[Any]] = set()  # running calls their requests abandoned
        self._closing = False
        self._spawned = 0

    # --- requests (any thread, usually the event loop) ----------------------------------------

    def submit(self, call: Call[Any]) -> None:
        wake: threading.Lock | None = None
        spawn = False
        with self._lock:
            if self._closing:
                raise Unavailable("the server is shutting down")
            if len(self._queue) >= self._max_queued:
                raise Unavailable(
                    f'model "{self.name}": {len(self._queue)} requests are queued for its'
                    f" {self._instances} execution thread(s); try again later"
                )
            self._queue.append(call)
            if self._parked:
                wake = self._parked.pop()
            elif len(self._threads) < self._instances:
                spawn = True
                thread = threading.Thread(
                    target=self._work,
                    name=f"pyserving-exec-{self.name}-{self._spawned}",
                    daemon=True,
                )
                self._spawned += 1
                self._threads.append(thread)
        if wake is not None:
            wake.release()
        elif spawn:
            try:
                thread.start()
            except RuntimeError:  # no thread to be had: the call waits for a running one
                with self._lock:
                    self._threads.remove(thread)
                logger.exception('execution: cannot start a thread for model "%s"', self.name)

    def abandon(self, call: Call[Any]) -> bool:
        with self._lock:
            state = call.state
            if state == _QUEUED:
                self._queue.remove(call)  # O(queued), bounded by max_queued
                call.state = _DONE
            elif state == _RUNNING:
                call.state = _ABANDONED
                self._stuck.add(call)
                return True
            else:
                return False
        call.fn = call.args = None
        if self._on_leave is not None:
            self._on_leave()
        return False

    def when_returned(self, call: Call[Any], callback: Callable[[], object]) -> bool:
        with self._lock:
            if call.state == _DONE:
                return False
            if call._on_return is None:
                call._on_return = []
            call._on_return.append(callback)
            return True

    def set_instances(self, instances: int) -> None:
        """Grow (on demand) or shrink (idle threads over the count exit) the thread count."""
        with self._lock:
            self._instances = max(1, instances)
            parked, self._parked = self._parked, []
        for wake in parked:  # each re-checks the count; extra ones exit
            wake.release()

    def stuck_reason(self) -> str | None:
        """Why the model cannot run calls now (every thread stuck), or None."""
        with self._lock:
            if not self._stuck or len(self._stuck) < self._instances:
                return None
            oldest = min(call.started for call in self._stuck)
            count = len(self._stuck)
        return (
            f"all {count} execution thread(s) are busy with calls past their deadline"
            f" (the oldest has run {time.monotonic() - oldest:.1f}s)"
        )

    @property
    def stuck(self) -> int:
        return len(self._stuck)

    def close(self) -> list[threading.Thread]:
        """Refuse new calls, fail queued ones with Unavailable; returns the threads to join."""
        with self._lock:
            self._closing = True
            queued = list(self._queue)
            self._queue.clear()
            for call in queued:
                call.state = _DONE
            parked, self._parked = self._parked, []
            threads = list(self._threads)
        for call in queued:
            call.fn = call.args = None
            call.mailbox.post(call.future, False, Unavailable("the server is shutting down"))
            if self._on_leave is not None:
                self._on_leave()
        for wake in parked:
            wake.release()
        return threads

    # --- execution threads ---------------------------------------------------------------------

    def _work(self) -> None:
        wake = threading.Lock()
        wake.acquire()  # held while running; a submit releases it to wake this thread
        me = threading.current_thread()
        while True:
            with self._lock:
                over = len(self._threads) > self._instances
                if self._queue and not over:
                    call = self._queue.popleft()
                    call.state = _RUNNING
                    call.started = time.monotonic()
                elif self._closing or over:
                    self._threads.remove(me)
                    return
                else:
                    call = None
                    self._parked.append(wake)
            if call is not None:
                self._run(call)
                continue
            if wake.acquire(timeout=IDLE_EXIT_S):
                continue
            with self._lock:
                if wake in self._parked:  # nobody woke it: exit
                    self._parked.remove(wake)
                    self._threads.remove(me)
                    return
            wake.acquire()  # a submit took it off the list and is releasing it now

    def _run(self, call: Call[Any]) -> None:
        fn, args = call.fn, call.args
        call.fn = call.args = None  # the inputs are freed as soon as the call returns
        assert fn is not None and args is not None
        try:
            value = fn(*args)
            ok = True
        except BaseException as exc:  # delivered to the request; the thread lives on
            value, ok = exc, False
        del fn, args
        with self._lock:
            abandoned = call.state == _ABANDONED
            call.state = _DONE
            if abandoned:
                self._stuck.discard(call)
            callbacks, call._on_return = call._on_return, None
        if not abandoned:
            call.mailbox.post(call.future, ok, value)
        del value
        if self._on_leave is not None:
            self._on_leave()
        for callback in callbacks or ():
            try:
                callback()
            except Exception:  # a bug in a callback must not kill the thread
                logger.exception("execution: callback after a returned call failed")
