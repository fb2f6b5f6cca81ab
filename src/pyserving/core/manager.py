"""Manager: takes aspired-version lists, applies the version policy, hands out handles."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import MappingProxyType

from pyserving.core.handle import ServableHandle, VersionRefCount
from pyserving.core.harness import HarnessOptions, HarnessState, LoaderHarness, WaitFn
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
from pyserving.errors import Code, NotFound

logger = logging.getLogger("pyserving.lifecycle")

_FINAL = (HarnessState.DISABLED, HarnessState.ERROR)
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
    Blocking: `aspire_versions` never waits for a load (work goes to the load/unload pools, or
    runs inline when a pool size is 0); `get_handle` is a dict lookup and a counter increment,
    never a wait; `stop` waits for every version to unload.
    Event-driven: a new aspired list, or a load/unload that finishes, re-runs that stream's policy
    at once; streams are independent, so different streams load in parallel on the load pool.
    """

    def __init__(
        self,
        options: ManagerOptions | None = None,
        bus: EventBus | None = None,
        wait: WaitFn | None = None,
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
        self._wait = wait
        self.bus = bus or EventBus()
        self.monitor = StateMonitor(self.bus)
        self.resources = ResourceTracker(self.options.total_model_memory_limit_bytes)
        self._load_pool = _make_executor(self.options.num_load_threads, "pyserving-load")
        self._unload_pool = _make_executor(self.options.num_unload_threads, "pyserving-unload")
        # guards _streams, harness.is_aspired/.ref, _running, _dirty, _executing, _resource_waiters,
        # _stopped
        self._lock = threading.Lock()
        # signalled whenever a load or unload finishes: resource waits and stop() wait on it
        self._op_done = threading.Condition(self._lock)
        self._streams: dict[str, _Stream] = {}
        self._running: set[str] = set()
        self._dirty: set[str] = set()
        self._executing = 0
        self._resource_waiters = 0
        self._stopped = False
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
            self._streams.setdefault(name, _Stream(name)).aspired = wanted
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
        """Unload every version (after in-flight requests) and shut the pools; True if clean."""
        with self._lock:
            names = list(self._streams)
            for stream in self._streams.values():
                stream.aspired = {}
        for name in names:
            self._reconcile(name)
        with self._lock:
            self._stopped = True
            drained = self._op_done.wait_for(self._all_settled_locked, timeout_s)
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
        with self._lock:
            stream = self._streams.get(name)
            if stream is None:
                return
            events = self._apply_aspired_locked(stream)
        for event in events:
            self.bus.publish(event)
        while True:
            with self._lock:
                action = self._policy(
                    [
                        VersionSnapshot(h.id, h.state, h.is_aspired)
                        for h in stream.harnesses.values()
                    ]
                )
                if action is None:
                    return
                harness = stream.harnesses[action.id.version]
                if action.kind is ActionKind.LOAD:
                    harness.request_load()
                else:
                    harness.request_unload()
            self._submit(action, harness)

    def _apply_aspired_locked(self, stream: _Stream) -> list[ServableStateEvent]:
        """Bring the harnesses in line with the aspired list; returns the events to publish."""
        events: list[ServableStateEvent] = []
        for version, harness in list(stream.harnesses.items()):
            if version in stream.aspired:
                continue
            if harness.is_aspired:
                harness.is_aspired = False
                harness.cancel_load_retries()
            if harness.state is HarnessState.NEW:
                # Never started: forget it, and tell status it is gone.
                del stream.harnesses[version]
                events.append(self._event(harness.id, ServableState.END))
            elif harness.state in _FINAL:
                del stream.harnesses[version]
        for version, item in stream.aspired.items():
            harness = stream.harnesses.get(version)
            if harness is None or self._should_replace(harness, item):
                harness = self._new_harness(item)
                stream.harnesses[version] = harness
                events.append(self._start_event(harness))
            elif not harness.is_aspired and harness.state not in _UNLOADING:
                # Re-aspired before it went away: keep it (a READY version keeps serving).
                harness.is_aspired = True
                harness.resume_load_retries()
        return events

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
        kwargs = {"wait": self._wait} if self._wait is not None else {}
        harness = LoaderHarness(
            item.id, item.data, self._harness_options, revision=item.revision, **kwargs
        )
        if item.error is not None or item.data is None:
            harness.fail(item.error or "no loader for this version", Code.UNKNOWN)
        return harness

    def _start_event(self, harness: LoaderHarness) -> ServableStateEvent:
        if harness.state is HarnessState.ERROR:
            return self._event(harness.id, ServableState.END, harness)
        return self._event(harness.id, ServableState.START)

    @staticmethod
    def _event(
        servable_id: ServableId,
        state: ServableState,
        harness: LoaderHarness | None = None,
        duration_s: float | None = None,
    ) -> ServableStateEvent:
        error = harness.error if harness is not None else None
        code = harness.error_code.name if harness is not None else "OK"
        return ServableStateEvent(servable_id, state, error, code, time.time(), duration_s)

    # -------------------------------------------------------------------------- load / unload

    def _submit(self, action: Action, harness: LoaderHarness) -> None:
        if action.kind is ActionKind.LOAD:
            self._load_pool.submit(self._run_job, self._execute_load, harness)
        else:
            self._unload_pool.submit(self._run_job, self._execute_unload, harness)

    def _run_job(self, job: Callable[[LoaderHarness], None], harness: LoaderHarness) -> None:
        try:
            job(harness)
        except Exception:
            logger.exception("lifecycle job for %s failed", harness.id)
            harness.fail("internal error in the manager; see the server log", Code.INTERNAL)
            self.resources.release(harness.id)
            self.bus.publish(self._event(harness.id, ServableState.END, harness))
        finally:
            self._reconcile(harness.id.name)

    def _execute_load(self, harness: LoaderHarness) -> None:
        started = time.perf_counter()
        with self._lock:
            self._executing += 1
        try:
            if not self._reserve_resources(harness):
                self.bus.publish(self._event(harness.id, ServableState.END, harness))
                return
            harness.approve_load()
            self.bus.publish(self._event(harness.id, ServableState.LOADING))
            if not harness.load():
                self.resources.release(harness.id)
                self.bus.publish(
                    self._event(
                        harness.id, ServableState.END, harness, time.perf_counter() - started
                    )
                )
                return
            self._refine_resources(harness)
            self._publish_serving_map()
            self.bus.publish(
                self._event(
                    harness.id, ServableState.AVAILABLE, duration_s=time.perf_counter() - started
                )
            )
        finally:
            with self._lock:
                self._executing -= 1
                self._op_done.notify_all()

    def _reserve_resources(self, harness: LoaderHarness) -> bool:
        """Reserve the version's RAM; waits while other loads/unloads run, then gives up.

        Blocking: waits on running lifecycle work (never on requests).
        """
        assert harness.loader is not None
        try:
            needed = max(0, int(harness.loader.estimate_resources()))
        except Exception as exc:
            harness.fail(f"estimating resources failed: {exc}", Code.UNKNOWN)
            return False
        with self._lock:
            while not self.resources.try_reserve(harness.id, needed):
                # Wait only while some other lifecycle job can still free memory; loads that are
                # themselves waiting here free nothing.
                if self._executing - self._resource_waiters <= 1:
                    harness.fail(
                        f"Insufficient resources to load servable {harness.id}: needs {needed} "
                        f"bytes, {self.resources.describe()}",
                        Code.RESOURCE_EXHAUSTED,
                    )
                    return False
                self._resource_waiters += 1
                try:
                    self._op_done.wait()
                finally:
                    self._resource_waiters -= 1
        return True

    def _refine_resources(self, harness: LoaderHarness) -> None:
        assert harness.loader is not None
        measured = harness.loader.resources_after_load()
        if measured is None and hasattr(harness.servable, "memory_bytes"):
            measured = harness.servable.memory_bytes()
        if measured is not None:
            self.resources.update(harness.id, measured)

    def _execute_unload(self, harness: LoaderHarness) -> None:
        started = time.perf_counter()
        with self._lock:
            self._executing += 1
        try:
            harness.start_quiescing()
            self.bus.publish(self._event(harness.id, ServableState.UNLOADING))
            self._publish_serving_map()
            # Requests already holding a handle on this version finish first; no new ones start.
            if harness.ref is not None:
                harness.ref.close_and_wait()
            harness.done_quiescing()
            harness.unload()
            self.resources.release(harness.id)
            self.bus.publish(
                self._event(harness.id, ServableState.END, duration_s=time.perf_counter() - started)
            )
        finally:
            with self._lock:
                self._executing -= 1
                self._op_done.notify_all()

    def _publish_serving_map(self) -> None:
        """Replace the serving map with one built from the READY versions of every stream."""
        with self._lock:
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
