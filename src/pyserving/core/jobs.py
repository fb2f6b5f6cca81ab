"""The Manager's lifecycle work: events in decision order, the serving map, load and unload
jobs with their retries (timers, never a sleeping thread) and memory checks."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import MappingProxyType
from typing import ParamSpec, TypeVar

from pyserving.core.handle import VersionRefCount
from pyserving.core.harness import HarnessState, LoaderHarness, is_permanent
from pyserving.core.ids import ServableData, ServableId, ServableState, ServableStateEvent
from pyserving.core.loader import Loader
from pyserving.core.monitor import EventBus
from pyserving.core.policy import Action, ActionKind
from pyserving.core.resources import ResourceTracker
from pyserving.core.scheduler import RetryScheduler
from pyserving.errors import Code

_P = ParamSpec("_P")
_T = TypeVar("_T")

logger = logging.getLogger("pyserving.lifecycle")

FINAL = (HarnessState.DISABLED, HarnessState.ERROR)
LOADING = (HarnessState.LOAD_REQUESTED, HarnessState.LOAD_APPROVED, HarnessState.LOADING)
UNLOADING = (
    HarnessState.UNLOAD_REQUESTED,
    HarnessState.QUIESCING,
    HarnessState.QUIESCED,
    HarnessState.UNLOADING,
)


@dataclass(frozen=True, slots=True)
class ManagerOptions:
    """Manager settings; field names match the `pyserving serve` flags."""

    num_load_threads: int = 2
    num_unload_threads: int = 1
    max_num_load_retries: int = 5
    load_retry_interval_micros: int = 1_000_000
    version_transition_policy: str = "availability"
    total_model_memory_limit_bytes: int | None = None


class InlineExecutor(Executor):
    """Runs each job on the submitting thread (pool size 0, as TF Serving's InlineExecutor)."""

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        future: Future[_T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


def make_executor(threads: int, name: str) -> Executor:
    """A pool of `threads` named `name`-N; with 0 threads, jobs run inline on the caller."""
    if threads <= 0:
        return InlineExecutor()
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)


class StreamEntry:
    """One stream's slice of the immutable serving map: each READY version and the latest."""

    __slots__ = ("latest", "versions")

    def __init__(self, versions: dict[int, VersionRefCount]) -> None:
        self.versions = versions
        self.latest = versions[max(versions)]


class Stream:
    """Manager-side record of one servable stream (guarded by the Manager's lock)."""

    __slots__ = ("aspired", "harnesses", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        #: the latest aspired list from the source: version → item
        self.aspired: dict[int, ServableData[Loader]] = {}
        self.harnesses: dict[int, LoaderHarness] = {}


class LifecycleJobs:
    """The Manager's working half: queues and delivers events, publishes the serving map, and
    runs the load and unload jobs (with retry timers and memory checks).

    The Manager subclasses it and sets the state declared here in its `__init__`; fields noted
    "under _lock" there are read and written only with `_lock` held. Thread-safety, blocking and
    ordering: as the Manager's (see there).
    """

    options: ManagerOptions
    bus: EventBus
    resources: ResourceTracker
    _lock: threading.Lock
    _op_done: threading.Condition
    _streams: dict[str, Stream]
    _executing: int
    _resource_waiters: int
    _events: deque[ServableStateEvent]
    _deliver_lock: threading.Lock
    _serving_map: MappingProxyType[str, StreamEntry]
    _check_fit_first: bool
    _scheduler: RetryScheduler
    _load_pool: Executor
    _unload_pool: Executor

    def _reconcile(self, name: str) -> None:
        """Re-run stream `name`'s policy (the Manager's); called after every job."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------- events

    def _emit_locked(
        self,
        servable_id: ServableId,
        state: ServableState,
        harness: LoaderHarness | None = None,
        duration_s: float | None = None,
    ) -> None:
        """Queue one event; called under the lock right where the state change is decided."""
        error = harness.error if harness is not None else None
        code = harness.error_code.name if harness is not None else "OK"
        self._events.append(
            ServableStateEvent(servable_id, state, error, code, time.time(), duration_s)
        )

    def _deliver(self) -> None:
        """Deliver the queued events in order; returns once every event queued before the call
        has been delivered (by this thread or by the one delivering when it was called)."""
        with self._deliver_lock:
            while self._events:
                self.bus.publish(self._events.popleft())

    def _fail_locked(self, harness: LoaderHarness, error: str, code: Code) -> None:
        """ERROR with `error`: release its memory and queue END with the reason."""
        harness.fail(error, code)
        self.resources.release(harness.id)
        self._emit_locked(harness.id, ServableState.END, harness)

    # -------------------------------------------------------------------------- load / unload

    def _submit(self, action: Action, harness: LoaderHarness) -> None:
        if action.kind is ActionKind.LOAD:
            self._load_pool.submit(self._run_job, self._execute_load, harness)
        else:
            self._unload_pool.submit(self._run_job, self._execute_unload, harness)

    def _run_job(self, job: Callable[[LoaderHarness], None], harness: LoaderHarness) -> None:
        with self._lock:
            self._executing += 1
        try:
            job(harness)
        except Exception:
            logger.exception("lifecycle job for %s failed", harness.id)
            with self._lock:
                held = harness.servable
                self._fail_locked(
                    harness, "internal error in the manager; see the server log", Code.INTERNAL
                )
                self._publish_serving_map_locked()
            self._deliver()
            if held is not None:  # never leave a loaded model behind
                if harness.ref is not None:
                    harness.ref.close_and_wait()
                harness.discard()
        finally:
            with self._lock:
                self._executing -= 1
                self._op_done.notify_all()
            self._reconcile(harness.id.name)

    def _execute_load(self, harness: LoaderHarness) -> None:
        if not self._reserve_resources(harness):
            return
        with self._lock:
            harness.approve_load()
            harness.start_loading()
            harness.load_started_s = time.perf_counter()
            self._emit_locked(harness.id, ServableState.LOADING)
        self._deliver()
        self._attempt_load(harness)

    def _attempt_load(self, harness: LoaderHarness) -> None:
        """One load attempt; on failure either schedules the next or ends the version."""
        try:
            servable = harness.attempt_load()
        except Exception as exc:
            self._attempt_failed(harness, exc)
            return
        try:
            measured = self._measure(harness, servable)
        except Exception as exc:
            # Loaded but unusable: unload it now, so a failed version never holds a model.
            harness.discard()
            self._attempt_failed(harness, exc, "loaded, then measuring its memory failed: ")
            return
        with self._lock:
            if measured is not None:
                self.resources.update(harness.id, measured)
            harness.loaded(servable)
            self._publish_serving_map_locked()
            self._emit_locked(
                harness.id,
                ServableState.AVAILABLE,
                duration_s=time.perf_counter() - harness.load_started_s,
            )
        self._deliver()

    @staticmethod
    def _measure(harness: LoaderHarness, servable: object) -> int | None:
        assert harness.loader is not None
        measured = harness.loader.resources_after_load()
        if measured is None and hasattr(servable, "memory_bytes"):
            measured = servable.memory_bytes()
        return measured

    def _attempt_failed(self, harness: LoaderHarness, exc: Exception, prefix: str = "") -> None:
        delay = harness.next_retry_delay(exc)
        error = f"{prefix}{harness.error}"
        attempts = harness.attempts
        with self._lock:
            if delay is None:
                self._fail_locked(harness, error, harness.error_code)
            else:
                self._emit_locked(harness.id, ServableState.LOADING, harness)
                harness.retry = self._scheduler.call_later(delay, lambda: self._retry_due(harness))
        if delay is not None:
            logger.warning(
                "loading %s failed (attempt %d of %d): %s; next attempt in %gs",
                harness.id,
                attempts,
                self.options.max_num_load_retries + 1,
                error,
                delay,
            )
        elif harness.retries_cancelled:
            logger.info("loading %s stopped: no longer aspired (last error: %s)", harness.id, error)
        else:
            logger.error(
                "loading %s failed for good after %d attempt(s)%s: %s",
                harness.id,
                attempts,
                "; not retried until its files change (the error is permanent)"
                if is_permanent(exc)
                else "",
                error,
            )
        self._deliver()

    def _retry_due(self, harness: LoaderHarness) -> None:
        """On the timer thread: hand the next attempt to the load pool (never load here)."""
        with self._lock:
            if harness.retry is None or harness.state is not HarnessState.LOADING:
                return  # cancelled while the timer fired
            harness.retry = None
        self._load_pool.submit(self._run_job, self._attempt_load, harness)

    def _estimate(self, harness: LoaderHarness) -> bool:
        """Ask the loader for its estimate once (outside the lock); False when that failed."""
        assert harness.loader is not None
        try:
            needed = max(0, int(harness.loader.estimate_resources()))
        except Exception as exc:
            with self._lock:
                self._fail_locked(harness, f"estimating resources failed: {exc}", Code.UNKNOWN)
            self._deliver()
            return False
        with self._lock:
            harness.estimate = needed
        return True

    def _refuse_versions_that_cannot_fit(self, name: str) -> None:
        """Resource-preserving: end every aspired new version whose estimate exceeds the budget
        even after every version on its way out is gone, before the policy unloads anything for
        it. The serving versions then stay (the policy keeps them while nothing can replace
        them), and the refused version's status says why."""
        with self._lock:
            stream = self._streams.get(name)
            unknown = [
                h
                for h in (stream.harnesses.values() if stream else ())
                if h.is_aspired and h.state is HarnessState.NEW and h.estimate is None
            ]
        for harness in unknown:
            self._estimate(harness)
        total = self.resources.total_bytes
        assert total is not None
        with self._lock:
            stream = self._streams.get(name)
            if stream is None:
                return
            # Lenient on purpose: memory that may still come free (versions on their way out,
            # loads that may yet fail) counts as free; _reserve_resources decides the rest.
            leaving = [
                h
                for s in self._streams.values()
                for h in s.harnesses.values()
                if (not h.is_aspired and h.state not in FINAL) or h.state in LOADING
            ]
            room = (
                total
                - self.resources.used_bytes
                + sum(self.resources.reserved(h.id) for h in leaving)
            )
            serving = sorted(
                v
                for v, h in stream.harnesses.items()
                if not h.is_aspired and h.state is HarnessState.READY
            )
            for harness in list(stream.harnesses.values()):
                needed = harness.estimate
                if harness.state is not HarnessState.NEW or needed is None or needed <= room:
                    continue
                kept = f"; version(s) {serving} keep serving" if serving else ""
                self._fail_locked(
                    harness,
                    f"Insufficient resources to load servable {harness.id}: needs {needed} bytes,"
                    f" at most {room} of {total} bytes can be freed for it{kept}",
                    Code.RESOURCE_EXHAUSTED,
                )
        self._deliver()

    def _reserve_resources(self, harness: LoaderHarness) -> bool:
        """Reserve the version's RAM; waits while other loads/unloads run, then gives up.

        Blocking: waits on running lifecycle work (never on requests).
        """
        if harness.estimate is None and not self._estimate(harness):
            return False
        needed = harness.estimate
        assert needed is not None
        with self._lock:
            while not self.resources.try_reserve(harness.id, needed):
                # Wait only while some other lifecycle job can still free memory; loads that are
                # themselves waiting here free nothing.
                if self._executing - self._resource_waiters <= 1:
                    self._fail_locked(
                        harness,
                        f"Insufficient resources to load servable {harness.id}: needs {needed} "
                        f"bytes, {self.resources.describe()}",
                        Code.RESOURCE_EXHAUSTED,
                    )
                    break
                self._resource_waiters += 1
                try:
                    self._op_done.wait()
                finally:
                    self._resource_waiters -= 1
            else:
                return True
        self._deliver()
        return False

    def _execute_unload(self, harness: LoaderHarness) -> None:
        started = time.perf_counter()
        with self._lock:
            harness.start_quiescing()
            self._publish_serving_map_locked()
            self._emit_locked(harness.id, ServableState.UNLOADING)
        self._deliver()
        # Requests already holding a handle on this version finish first; no new ones start.
        if harness.ref is not None:
            harness.ref.close_and_wait()
        harness.done_quiescing()
        harness.start_unloading()
        harness.run_unload()
        with self._lock:
            harness.finish_unload()
            self.resources.release(harness.id)
            self._emit_locked(
                harness.id, ServableState.END, duration_s=time.perf_counter() - started
            )
        self._deliver()

    def _publish_serving_map_locked(self) -> None:
        """Replace the serving map with one built from the READY versions of every stream."""
        new: dict[str, StreamEntry] = {}
        for name, stream in self._streams.items():
            versions: dict[int, VersionRefCount] = {}
            for version, harness in stream.harnesses.items():
                if harness.state is HarnessState.READY:
                    if harness.ref is None:
                        harness.ref = VersionRefCount(harness.id, harness.servable)
                    versions[version] = harness.ref
            if versions:
                new[name] = StreamEntry(versions)
        self._serving_map = MappingProxyType(new)
