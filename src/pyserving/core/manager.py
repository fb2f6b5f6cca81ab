"""Manager: takes aspired-version lists, applies the version policy, hands out handles."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import MappingProxyType

from pyserving.core.handle import ServableHandle, VersionRefCount
from pyserving.core.harness import HarnessOptions, HarnessState, LoaderHarness, is_permanent
from pyserving.core.ids import (
    ServableData,
    ServableId,
    ServableRequest,
    ServableState,
    ServableStateEvent,
)
from pyserving.core.loader import Loader
from pyserving.core.monitor import EventBus, StateMonitor
from pyserving.core.policy import POLICIES, Action, ActionKind, VersionSnapshot
from pyserving.core.resources import ResourceTracker
from pyserving.core.scheduler import RetryScheduler
from pyserving.errors import Code, NotFound

logger = logging.getLogger("pyserving.lifecycle")

_FINAL = (HarnessState.DISABLED, HarnessState.ERROR)
_LOADING = (HarnessState.LOAD_REQUESTED, HarnessState.LOAD_APPROVED, HarnessState.LOADING)
_UNLOADING = (
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


class _InlineExecutor(Executor):
    """Runs each job on the submitting thread (pool size 0, as TF Serving's InlineExecutor)."""

    def submit(self, fn: Callable[..., object], /, *args: object, **kwargs: object) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


def _make_executor(threads: int, name: str) -> Executor:
    if threads <= 0:
        return _InlineExecutor()
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)


class _StreamEntry:
    """One stream's slice of the immutable serving map: each READY version and the latest."""

    __slots__ = ("latest", "versions")

    def __init__(self, versions: dict[int, VersionRefCount]) -> None:
        self.versions = versions
        self.latest = versions[max(versions)]


class _Stream:
    """Manager-side record of one servable stream (guarded by the Manager's lock)."""

    __slots__ = ("aspired", "harnesses", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        #: the latest aspired list from the source: version → item
        self.aspired: dict[int, ServableData[Loader]] = {}
        self.harnesses: dict[int, LoaderHarness] = {}


class Manager:
    """Owns every version's lifecycle and the serving map requests read handles from.

    Thread-safety: every public method may be called from any thread.
    Ordering: every state change of a version is decided under the Manager's lock, and its event
    is queued there, in that order; events reach the bus in queue order, one delivering thread
    at a time. So the state monitor, metrics and logs see each version's states in the order the
    Manager decided them — never the order threads happen to finish in — and a call that
    changed states returns once their events were delivered. Bus subscribers must not call back
    into the Manager's mutating methods.
    Blocking: `aspire_versions` never waits for a load (work goes to the load/unload pools, or
    runs inline when a pool size is 0); `get_handle` is a dict lookup and a counter increment,
    never a wait; `stop` waits for every version to unload. A failed load attempt holds no
    thread while it waits to retry: the next attempt is a timer on the RetryScheduler.
    Event-driven: a new aspired list, or a load/unload that finishes, re-runs that stream's policy
    at once; streams are independent, so different streams load in parallel on the load pool,
    and a version waiting out its backoff never delays another version's load.
    """

    def __init__(
        self,
        options: ManagerOptions | None = None,
        bus: EventBus | None = None,
        scheduler: RetryScheduler | None = None,
    ) -> None:
        self.options = options or ManagerOptions()
        if self.options.version_transition_policy not in POLICIES:
            raise ValueError(
                f"unknown version transition policy {self.options.version_transition_policy!r}; "
                f"expected one of {sorted(POLICIES)}"
            )
        self._policy = POLICIES[self.options.version_transition_policy]
        self._harness_options = HarnessOptions(
            max_num_load_retries=self.options.max_num_load_retries,
            load_retry_interval_micros=self.options.load_retry_interval_micros,
        )
        self.bus = bus or EventBus()
        self.monitor = StateMonitor(self.bus)
        self.resources = ResourceTracker(self.options.total_model_memory_limit_bytes)
        # Resource-preserving swaps unload first: check a new version fits before that happens.
        self._check_fit_first = (
            self.options.version_transition_policy == "resource"
            and self.resources.total_bytes is not None
        )
        self._scheduler = scheduler if scheduler is not None else RetryScheduler()
        self._load_pool = _make_executor(self.options.num_load_threads, "pyserving-load")
        self._unload_pool = _make_executor(self.options.num_unload_threads, "pyserving-unload")
        # guards _streams, every harness's state changes and Manager-owned fields, _running,
        # _dirty, _executing, _resource_waiters, _stopped, _serving_map; appends to _events
        self._lock = threading.Lock()
        # signalled whenever a load or unload finishes: resource waits and stop() wait on it
        self._op_done = threading.Condition(self._lock)
        self._streams: dict[str, _Stream] = {}
        self._running: set[str] = set()
        self._dirty: set[str] = set()
        self._executing = 0
        self._resource_waiters = 0
        self._stopped = False
        # Events in the order decided (appended under _lock), delivered under _deliver_lock.
        self._events: deque[ServableStateEvent] = deque()
        self._deliver_lock = threading.Lock()
        # The serving map is replaced whole, never mutated, so readers take no lock.
        self._serving_map: MappingProxyType[str, _StreamEntry] = MappingProxyType({})

    # ----------------------------------------------------------------------------- public API

    def aspire_versions(self, name: str, versions: Sequence[ServableData[Loader]]) -> None:
        """The Target callback: every version wanted for `name`, replacing the previous list.

        An omitted version is an implicit unload; an empty list unloads the whole stream.
        Items for another stream are logged and dropped.
        """
        wanted: dict[int, ServableData[Loader]] = {}
        for item in versions:
            if item.id.name != name:
                logger.error("dropping %s: aspired for stream %r", item.id, name)
                continue
            wanted[item.id.version] = item
        with self._lock:
            if self._stopped:
                return
            stream = self._streams.setdefault(name, _Stream(name))
            stream.aspired = wanted
            self._apply_aspired_locked(stream)
        self._deliver()
        self._reconcile(name)

    def get_handle(self, request: ServableRequest) -> ServableHandle:
        """A handle on the requested AVAILABLE version; raises NotFound when there is none."""
        while True:
            entry = self._serving_map.get(request.name)
            if entry is None:
                raise NotFound(f"Servable not found for request: {request}")
            if request.version is None:
                ref = entry.latest
            else:
                found = entry.versions.get(request.version)
                if found is None:
                    raise NotFound(f"Servable not found for request: {request}")
                ref = found
            if ref.try_acquire():
                return ServableHandle(ref)
            # The version began unloading after we read the map; the map without it is already
            # published, so looking again resolves to what serves now.

    def available_versions(self, name: str) -> list[int]:
        """AVAILABLE versions of `name`, highest first."""
        entry = self._serving_map.get(name)
        return sorted(entry.versions, reverse=True) if entry else []

    def list_available(self) -> list[ServableId]:
        return [
            ServableId(name, v)
            for name, entry in sorted(self._serving_map.items())
            for v in sorted(entry.versions)
        ]

    def stream_names(self) -> list[str]:
        """Every stream the Manager has been told about, loaded or not."""
        with self._lock:
            return sorted(self._streams)

    def stop(self, timeout_s: float | None = None) -> bool:
        """Unload every version (after in-flight requests), cancel pending retries and shut the
        pools; True if everything unloaded in time."""
        with self._lock:
            names = list(self._streams)
            for stream in self._streams.values():
                stream.aspired = {}
                self._apply_aspired_locked(stream)
        self._deliver()
        for name in names:
            self._reconcile(name)
        with self._lock:
            self._stopped = True
            drained = self._op_done.wait_for(self._all_settled_locked, timeout_s)
        self._deliver()
        self._scheduler.close()
        self._load_pool.shutdown(wait=drained)
        self._unload_pool.shutdown(wait=drained)
        return drained

    # -------------------------------------------------------------------------- reconciliation

    def _all_settled_locked(self) -> bool:
        return (
            self._executing == 0
            and not self._running
            and all(h.state in _FINAL for s in self._streams.values() for h in s.harnesses.values())
        )

    def _reconcile(self, name: str) -> None:
        """Run `name`'s policy until it asks for nothing more; one thread per stream at a time.

        A caller that finds the stream already being reconciled marks it dirty and returns; the
        running thread goes round again, so no wake-up is lost and no call recurses.
        """
        with self._lock:
            if name in self._running:
                self._dirty.add(name)
                return
            self._running.add(name)
        try:
            while True:
                self._reconcile_once(name)
                with self._lock:
                    if name not in self._dirty:
                        self._running.discard(name)
                        self._op_done.notify_all()
                        return
                    self._dirty.discard(name)
        except BaseException:
            with self._lock:
                self._running.discard(name)
                self._op_done.notify_all()
            raise

    def _reconcile_once(self, name: str) -> None:
        if self._check_fit_first:
            self._refuse_versions_that_cannot_fit(name)
        while True:
            with self._lock:
                stream = self._streams.get(name)
                action = None
                if stream is not None:
                    self._apply_aspired_locked(stream)
                    action = self._policy(
                        [
                            VersionSnapshot(h.id, h.state, h.is_aspired)
                            for h in stream.harnesses.values()
                        ]
                    )
                if action is not None:
                    harness = stream.harnesses[action.id.version]
                    if action.kind is ActionKind.LOAD:
                        harness.request_load()
                    else:
                        harness.request_unload()
            self._deliver()
            if action is None:
                return
            self._submit(action, harness)

    def _apply_aspired_locked(self, stream: _Stream) -> None:
        """Bring the harnesses in line with the aspired list, queueing the events."""
        for version, harness in list(stream.harnesses.items()):
            if version in stream.aspired:
                continue
            if harness.is_aspired:
                harness.is_aspired = False
                harness.cancel_load_retries()
                if harness.retry is not None:
                    # Waiting out a backoff: no attempt runs, so it ends here and now.
                    harness.retry.cancel()
                    harness.retry = None
                    self._fail_locked(
                        harness,
                        f"Loading of servable cancelled: no longer aspired (last error: "
                        f"{harness.error})",
                        Code.CANCELLED,
                    )
            if harness.state is HarnessState.NEW:
                # Never started: forget it, and tell status it is gone.
                del stream.harnesses[version]
                self._emit_locked(harness.id, ServableState.END)
            elif harness.state in _FINAL:
                del stream.harnesses[version]
        for version, item in stream.aspired.items():
            harness = stream.harnesses.get(version)
            if harness is None or self._should_replace(harness, item):
                harness = self._new_harness(item)
                stream.harnesses[version] = harness
                if harness.state is HarnessState.ERROR:
                    self._emit_locked(harness.id, ServableState.END, harness)
                else:
                    self._emit_locked(harness.id, ServableState.START)
            elif not harness.is_aspired and harness.state not in _UNLOADING:
                # Re-aspired before it went away: keep it (a READY version keeps serving).
                harness.is_aspired = True
                harness.resume_load_retries()

    @staticmethod
    def _should_replace(harness: LoaderHarness, item: ServableData[Loader]) -> bool:
        if harness.state is HarnessState.DISABLED:
            return item.data is not harness.loader or harness.loader is None
        if harness.state is HarnessState.ERROR:
            # A failed version is tried again when re-aspired or when its files changed.
            return (not harness.is_aspired or item.revision != harness.revision) and (
                item.data is not harness.loader or item.error is not None
            )
        return False

    def _new_harness(self, item: ServableData[Loader]) -> LoaderHarness:
        harness = LoaderHarness(item.id, item.data, self._harness_options, revision=item.revision)
        if item.error is not None or item.data is None:
            harness.fail(item.error or "no loader for this version", Code.UNKNOWN)
        return harness

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
                if (not h.is_aspired and h.state not in _FINAL) or h.state in _LOADING
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
        new: dict[str, _StreamEntry] = {}
        for name, stream in self._streams.items():
            versions: dict[int, VersionRefCount] = {}
            for version, harness in stream.harnesses.items():
                if harness.state is HarnessState.READY:
                    if harness.ref is None:
                        harness.ref = VersionRefCount(harness.id, harness.servable)
                    versions[version] = harness.ref
            if versions:
                new[name] = _StreamEntry(versions)
        self._serving_map = MappingProxyType(new)
