"""Manager: takes aspired-version lists, applies the version policy, hands out handles."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence
from types import MappingProxyType

from pyserving.core.handle import ServableHandle
from pyserving.core.harness import HarnessOptions, HarnessState, LoaderHarness
from pyserving.core.ids import (
    ServableData,
    ServableId,
    ServableRequest,
    ServableState,
    ServableStateEvent,
)
from pyserving.core.jobs import (
    FINAL,
    UNLOADING,
    LifecycleJobs,
    ManagerOptions,
    Stream,
    StreamEntry,
    make_executor,
)
from pyserving.core.loader import Loader
from pyserving.core.monitor import EventBus, StateMonitor
from pyserving.core.policy import POLICIES, ActionKind, VersionSnapshot
from pyserving.core.resources import ResourceTracker
from pyserving.core.scheduler import RetryScheduler
from pyserving.errors import Code, ServableNotFound

__all__ = ["Manager", "ManagerOptions"]

logger = logging.getLogger("pyserving.lifecycle")


class Manager(LifecycleJobs):
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
        self._load_pool = make_executor(self.options.num_load_threads, "pyserving-load")
        self._unload_pool = make_executor(self.options.num_unload_threads, "pyserving-unload")
        # guards _streams, every harness's state changes and Manager-owned fields, _running,
        # _dirty, _executing, _resource_waiters, _stopped, _serving_map; appends to _events
        self._lock = threading.Lock()
        # signalled whenever a load or unload finishes: resource waits and stop() wait on it
        self._op_done = threading.Condition(self._lock)
        self._streams: dict[str, Stream] = {}
        self._running: set[str] = set()
        self._dirty: set[str] = set()
        self._executing = 0
        self._resource_waiters = 0
        self._stopped = False
        # Events in the order decided (appended under _lock), delivered under _deliver_lock.
        self._events: deque[ServableStateEvent] = deque()
        self._deliver_lock = threading.Lock()
        # The serving map is replaced whole, never mutated, so readers take no lock.
        self._serving_map: MappingProxyType[str, StreamEntry] = MappingProxyType({})

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
            stream = self._streams.setdefault(name, Stream(name))
            stream.aspired = wanted
            self._apply_aspired_locked(stream)
        self._deliver()
        self._reconcile(name)

    def get_handle(self, request: ServableRequest) -> ServableHandle:
        """A handle on the requested AVAILABLE version; raises ServableNotFound when none is."""
        while True:
            entry = self._serving_map.get(request.name)
            if entry is None:
                raise ServableNotFound(
                    f"Servable not found for request: {request}", request.name, request.version
                )
            if request.version is None:
                ref = entry.latest
            else:
                found = entry.versions.get(request.version)
                if found is None:
                    raise ServableNotFound(
                        f"Servable not found for request: {request}", request.name, request.version
                    )
                ref = found
            if ref.try_acquire():
                return ServableHandle(ref)
            # The version began unloading after we read the map; the map without it is already
            # published, so looking again resolves to what serves now.

    def in_flight(self, name: str) -> int:
        """Requests holding a handle on a serving version of `name` now (a snapshot, no lock)."""
        entry = self._serving_map.get(name)
        return sum(ref.in_flight for ref in entry.versions.values()) if entry else 0

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
            and all(h.state in FINAL for s in self._streams.values() for h in s.harnesses.values())
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
                    assert stream is not None  # the policy chose among this stream's versions
                    harness = stream.harnesses[action.id.version]
                    if action.kind is ActionKind.LOAD:
                        harness.request_load()
                    else:
                        harness.request_unload()
            self._deliver()
            if action is None:
                return
            self._submit(action, harness)

    def _apply_aspired_locked(self, stream: Stream) -> None:
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
            elif harness.state in FINAL:
                del stream.harnesses[version]
        for version, item in stream.aspired.items():
            current = stream.harnesses.get(version)
            if current is None or self._should_replace(current, item):
                harness = self._new_harness(item)
                stream.harnesses[version] = harness
                if harness.state is HarnessState.ERROR:
                    self._emit_locked(harness.id, ServableState.END, harness)
                else:
                    self._emit_locked(harness.id, ServableState.START)
            elif not current.is_aspired and current.state not in UNLOADING:
                # Re-aspired before it went away: keep it (a READY version keeps serving).
                current.is_aspired = True
                current.resume_load_retries()

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
