"""Models loaded on demand (`load: on_demand`): held back from the Manager until a request names
one, and unloaded least-recently-used first when the memory budget needs room (docs/config.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from typing import Generic, TypeVar

from pyserving.core.ids import ServableData, ServableId, ServableState, ServableStateEvent
from pyserving.core.manager import Manager
from pyserving.core.scheduler import RetryScheduler, ScheduledCall
from pyserving.errors import (
    DeadlineExceeded,
    ModelMemoryExhausted,
    NotFound,
    ServingError,
    Unavailable,
)
from pyserving.metrics import MODEL_EVICTIONS, MODEL_LOADS, MODEL_MEMORY_BYTES

__all__ = ["ON_DEMAND", "OnDemandModels", "on_demand_settings"]

logger = logging.getLogger("pyserving.lifecycle")

#: the `load:` value that makes a model load on its first request
ON_DEMAND = "on_demand"
#: the `load:` value of a model loaded as soon as its versions are found (the default)
ALWAYS = "always"

Clock = Callable[[], float]
#: how often a load waiting for a model in use to be released looks again
_ROOM_POLL_S = 0.005
T = TypeVar("T")


def on_demand_settings(
    models: Sequence[tuple[str, Mapping[str, object]]],
) -> dict[str, float | None]:
    """name → `idle_unload_seconds` (None: never idle-unloaded) of each (name, options) whose
    `load` is on_demand; the config parser has checked both values."""
    settings: dict[str, float | None] = {}
    for name, options in models:
        if options.get("load") == ON_DEMAND:
            idle = options.get("idle_unload_seconds")
            settings[name] = float(idle) if isinstance(idle, int | float) else None
    return settings


class OnDemandModels(Generic[T]):
    """Sits between the source and its adapter: forwards the aspired versions of an on-demand
    model only once a request asks for it, and takes them back (an empty list) to evict it, so
    every load gets fresh Loaders from the adapter. Always-loaded models pass straight through.

    One load per model however many requests wait for it (a single flight); loads that need room
    under `--total-model-memory-limit-bytes` unload the least recently used on-demand models
    that no request holds (never an always-loaded one); the memory counted per model is what the
    resource tracker holds for it (its measured figure when the platform reports one).
    Thread-safety: every method may be called from any thread; `ensure` is a coroutine for any
    event loop. Blocking: `ensure` never blocks its loop (loads and room-making run on this
    object's threads); `aspire_versions` never waits for a load. Decisions that free memory are
    serialised by one lock, so two loads never count the same free bytes.
    Hot path: a request for a loaded model costs two dict reads and one stamp (no lock).
    """

    def __init__(
        self,
        manager: Manager,
        forward: Callable[[str, list[ServableData[T]]], None],
        estimate: Callable[[ServableData[T]], int],
        clock: Clock = time.monotonic,
        scheduler: RetryScheduler | None = None,
        load_timeout_s: float = 300.0,
        load_threads: int = 4,
        room_wait_s: float = 30.0,
    ) -> None:
        self._manager = manager
        # the adapter's aspire_versions: it builds Loaders, the Manager loads them
        self._forward = forward
        self._estimate = estimate  # an item's memory estimate (0: unknown)
        self._clock = clock
        self._scheduler = scheduler if scheduler is not None else RetryScheduler(clock)
        self._load_timeout_s = load_timeout_s
        #: how long a load waits for models in use to be released when only they could make room
        self._room_wait_s = room_wait_s
        self._lock = threading.Lock()  # guards _settings (replaced whole), _held, _active, _flights
        self._room_lock = (
            threading.Lock()
        )  # one room-making decision (evict, then aspire) at a time
        self._settings: dict[str, float | None] = {}
        self._held: dict[str, list[ServableData[T]]] = {}
        self._active: set[str] = set()
        self._flights: dict[str, Future[None]] = {}
        #: name → requests that waited for its load and have not taken a handle yet
        self._pins: dict[str, int] = {}
        #: name → clock() of its last request; written without a lock (a stamp, last one wins)
        self.last_used: dict[str, float] = {}
        self._idle_timer: ScheduledCall | None = None
        self._closed = False  # set once by close(): loads waiting for room give up
        self._pool = ThreadPoolExecutor(max_workers=load_threads, thread_name_prefix="pyserving-od")
        self._unsubscribe = manager.bus.subscribe(self._on_event)

    # --- configuration and the source side --------------------------------------------------

    def configure(self, settings: Mapping[str, float | None]) -> None:
        """Use `settings` (name → idle_unload_seconds, from `on_demand_settings`) from now on.

        A model that stops being on-demand gets its held versions loaded; a loaded model that
        becomes on-demand stays loaded (and may be evicted from then on).
        """
        release: list[tuple[str, list[ServableData[T]]]] = []
        with self._lock:
            for name in list(self._held):
                if name not in settings:
                    versions = self._held.pop(name)
                    if name not in self._active:
                        release.append((name, versions))
                    self._active.discard(name)
            for name in settings:
                if name not in self._settings and self._manager.available_versions(name):
                    self._active.add(name)
            self._settings = dict(settings)
        for name, versions in release:
            self._forward(name, versions)
        self._schedule_idle_sweep()

    def is_on_demand(self, name: str) -> bool:
        return name in self._settings

    def is_loaded(self, name: str) -> bool:
        """True while an on-demand model's versions are handed to the Manager."""
        return name in self._active

    def held_versions(self, name: str) -> list[int]:
        """The versions the source found for an on-demand model (loaded or not)."""
        with self._lock:
            return sorted(item.id.version for item in self._held.get(name, ()))

    def aspire_versions(self, name: str, versions: Sequence[ServableData[T]]) -> None:
        """The source's callback: on-demand models' lists are kept (and forwarded only while
        loaded, so a new version of a loaded model swaps in as usual); others go straight on."""
        forward: Sequence[ServableData[T]] | None = versions
        with self._lock:
            if name in self._settings:
                first = name not in self._held
                self._held[name] = list(versions)
                if name not in self._active:
                    # the Manager learns the name (listed, status) with nothing to load
                    forward = [] if first else None
        if forward is not None:
            self._forward(name, list(forward))

    # --- the request side --------------------------------------------------------------------

    async def ensure(self, name: str, deadline: float | None) -> bool:
        """Return once on-demand model `name` has a loaded version (loading it if needed);
        returns at once for any other model. Raises DeadlineExceeded when `deadline` (a
        `time.monotonic()` instant) passes first, Unavailable / ResourceExhausted when the load
        fails, NotFound when the model has no version.

        True when it waited for a load: the model is then pinned (never evicted) until the
        caller, having taken its handle, calls `unpin(name)`.
        """
        if name not in self._settings:
            return False
        self.last_used[name] = self._clock()
        if name in self._active and self._manager.available_versions(name):
            return False
        with self._lock:
            self._pins[name] = self._pins.get(name, 0) + 1
        try:
            flight = self._flight(name)
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                raise DeadlineExceeded(f'model "{name}": deadline exceeded while loading on demand')
            try:
                # shield: one waiter giving up must not cancel the load the others wait for
                await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(flight)), timeout)
            except TimeoutError:
                raise DeadlineExceeded(
                    f'model "{name}": still loading on demand at the request deadline'
                ) from None
        except BaseException:
            self.unpin(name)
            raise
        self.last_used[name] = self._clock()
        return True

    def unpin(self, name: str) -> None:
        """End the pin an `ensure` that returned True took (the request holds a handle now)."""
        with self._lock:
            left = self._pins.get(name, 0) - 1
            if left > 0:
                self._pins[name] = left
            else:
                self._pins.pop(name, None)

    def _flight(self, name: str) -> Future[None]:
        with self._lock:
            flight = self._flights.get(name)
            if flight is None:
                flight = Future()
                self._flights[name] = flight
                self._pool.submit(self._load, name, flight)
            return flight

    def _load(self, name: str, flight: Future[None]) -> None:
        """On a pool thread: make room, aspire, wait for the outcome; settles `flight`."""
        error: BaseException | None = None
        try:
            self._activate(name)
            self._wait_loaded(name)
        except ServingError as exc:
            error = exc
        except Exception as exc:  # edge: a bug here must answer the waiters, not hang them
            logger.exception("loading %s on demand failed", name)
            error = Unavailable(f'model "{name}": loading on demand failed: {exc}')
        with self._lock:
            self._flights.pop(name, None)
        # close() may have settled it already (a stopping server answers every waiter)
        with contextlib.suppress(InvalidStateError):
            if error is None:
                flight.set_result(None)
            else:
                flight.set_exception(error)

    def _activate(self, name: str) -> None:
        with self._room_lock:
            with self._lock:
                versions = list(self._held.get(name, ()))
                retry = name in self._active
            if not versions:
                raise NotFound(f'model "{name}": no version found to load on demand')
            if retry:
                if self._manager.available_versions(name) or self._busy(name):
                    return  # loaded or loading already (a new version swapping in)
                # active but every version failed: drop them, so this request tries afresh
                self._forward(name, [])
            needed = sum(self._safe_estimate(item) for item in versions)
            self._make_room(name, needed)
            with self._lock:
                self._active.add(name)
                versions = list(self._held.get(name, versions))
            self._forward(name, versions)
            # Hold the room lock until the load has reserved its memory (LOADING) or ended, so
            # the next decision counts those bytes as used.
            self._manager.monitor.wait_until(lambda: not self._starting(name), self._load_timeout_s)

    def _safe_estimate(self, item: ServableData[T]) -> int:
        try:
            return max(0, int(self._estimate(item)))
        except Exception:  # edge: the Manager reports a failing estimate when it loads
            return 0

    def _wait_loaded(self, name: str) -> None:
        monitor = self._manager.monitor
        monitor.wait_until(
            lambda: bool(self._manager.available_versions(name)) or not self._busy(name),
            self._load_timeout_s,
        )
        if self._manager.available_versions(name):
            return
        failed = [s for s in monitor.states(name) if s.state is ServableState.END and s.error]
        if failed and failed[0].error_code == "RESOURCE_EXHAUSTED":
            raise ModelMemoryExhausted(f'model "{name}" could not be loaded: {failed[0].error}')
        reason = failed[0].error if failed else "no version became available"
        raise Unavailable(f'model "{name}" could not be loaded on demand: {reason}')

    def _busy(self, name: str) -> bool:
        """A version of `name` is starting or loading (one waiting out a retry counts)."""
        busy = (ServableState.START, ServableState.LOADING)
        return any(s.state in busy for s in self._manager.monitor.states(name))

    def _starting(self, name: str) -> bool:
        return any(s.state is ServableState.START for s in self._manager.monitor.states(name))

    # --- making room -------------------------------------------------------------------------

    def _make_room(self, name: str, needed: int) -> None:
        """Evict LRU idle on-demand models until `needed` bytes are free; under _room_lock."""
        resources = self._manager.resources
        total = resources.total_bytes
        if total is None:
            return
        give_up = time.monotonic() + self._room_wait_s
        while needed > total - resources.used_bytes:
            victim = self._lru_victim(exclude=name)
            short = needed - (total - resources.used_bytes)
            waiting = time.monotonic() < give_up and not self._closed
            if victim is None and waiting and self._could_free(name) >= short:
                # Only models in use could make room: their requests are short, so wait for one
                # to be released (polled: releasing a handle signals nothing) rather than fail.
                time.sleep(_ROOM_POLL_S)
                continue
            if victim is None:
                raise ModelMemoryExhausted(
                    f'model "{name}" needs {needed} bytes to load on demand, but the model memory'
                    f" budget (--total-model-memory-limit-bytes={total}) has"
                    f" {total - resources.used_bytes} free, and every other loaded model is in"
                    " use or always loaded"
                )
            self._evict(victim, "to make room for " + name)

    def _could_free(self, exclude: str) -> int:
        """Bytes every loaded on-demand model but `exclude` holds, in use or not."""
        with self._lock:
            active = [n for n in self._active if n != exclude]
        resources = self._manager.resources
        return sum(
            resources.reserved(ServableId(n, v))
            for n in active
            for v in self._manager.available_versions(n)
        )

    def _lru_victim(self, exclude: str) -> str | None:
        manager = self._manager
        with self._lock:
            candidates = [
                n
                for n in self._active
                if n != exclude
                and n not in self._flights
                and n not in self._pins
                and manager.available_versions(n)
                and manager.in_flight(n) == 0
            ]
        if not candidates:
            return None
        return min(candidates, key=lambda n: self.last_used.get(n, 0.0))

    def _evict(self, name: str, why: str) -> None:
        """Un-aspire `name` and wait (bounded) until its versions have unloaded."""
        with self._lock:
            self._active.discard(name)
        logger.info("unloading on-demand model %s (%s)", name, why)
        MODEL_EVICTIONS.labels(name).inc()
        self._forward(name, [])
        self._manager.monitor.wait_until(
            lambda: all(s.state is ServableState.END for s in self._manager.monitor.states(name)),
            self._load_timeout_s,
        )

    # --- idle unload -------------------------------------------------------------------------

    def unload_idle(self) -> list[str]:
        """Unload every loaded on-demand model idle (no request held, none since) for its
        `idle_unload_seconds`; returns their names. Runs on the scheduler's timer."""
        now = self._clock()
        with self._lock:
            due = [
                n
                for n in self._active
                if (idle := self._settings.get(n)) is not None
                and now - self.last_used.get(n, now) >= idle
                and n not in self._flights
                and n not in self._pins
            ]
        unloaded = []
        for name in due:
            with self._room_lock:
                if name in self._active and self._manager.in_flight(name) == 0:
                    self._evict(name, "idle")
                    unloaded.append(name)
        return unloaded

    def _schedule_idle_sweep(self) -> None:
        idles = [s for s in self._settings.values() if s is not None]
        with self._lock:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
                self._idle_timer = None
            if not idles:
                return
            period = max(0.05, min(idles) / 4)
            self._idle_timer = self._scheduler.call_later(period, self._idle_tick)

    def _idle_tick(self) -> None:
        # the timer thread only hands the sweep (which may wait for unloads) to a pool thread
        self._pool.submit(self._sweep_and_reschedule)

    def _sweep_and_reschedule(self) -> None:
        try:
            self.unload_idle()
        finally:
            self._schedule_idle_sweep()

    # --- metrics and shutdown ----------------------------------------------------------------

    def _on_event(self, event: ServableStateEvent) -> None:
        name, version = event.id.name, str(event.id.version)
        if event.state is ServableState.AVAILABLE:
            reason = "request" if name in self._flights else "aspired"
            MODEL_LOADS.labels(name, reason).inc()
            MODEL_MEMORY_BYTES.labels(name, version).set(
                self._manager.resources.reserved(ServableId(name, event.id.version))
            )
        elif event.state is ServableState.END:
            with contextlib.suppress(KeyError):  # it never loaded
                # 0 first: under --workers (multiprocess metrics) remove() keeps the series
                MODEL_MEMORY_BYTES.labels(name, version).set(0)
                MODEL_MEMORY_BYTES.remove(name, version)

    def close(self) -> None:
        """Stop the idle timer and the load threads (waiters get what their loads end with)."""
        self._unsubscribe()
        self._closed = True
        with self._lock:
            self._settings = {}
            if self._idle_timer is not None:
                self._idle_timer.cancel()
        self._scheduler.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        # a flight whose job was cancelled before it ran would leave its waiters waiting
        with self._lock:
            pending = list(self._flights.values())
        for flight in pending:
            with contextlib.suppress(InvalidStateError):
                flight.set_exception(Unavailable("the server is stopping"))
