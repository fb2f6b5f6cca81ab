"""Serving metrics: the model-state gauge and the load-duration histogram (from the event bus),
and the event loop's lag (`watch_event_loop_lag`)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from pyserving.core.ids import ServableState, ServableStateEvent
from pyserving.core.monitor import EventBus, StateMonitor
from pyserving.metrics import LOAD_DURATION, MODEL_VERSIONS

__all__ = ["LifecycleMetrics", "watch_event_loop_lag"]

#: the states the gauge reports, as TF Serving's status API names them
_STATES = tuple(s for s in ServableState if s is not ServableState.UNKNOWN)


class LifecycleMetrics:
    """Keeps `pyserving_model_versions{model,state}` equal to what the state monitor knows, and
    observes `pyserving_load_duration_seconds{model}` for every version that became AVAILABLE.

    Thread-safety: events may arrive on any thread; the gauge update for one event reads the
    monitor and sets every state's value under one lock, so the last writer always writes the
    newest counts. The monitor must subscribe to the bus before this does (Manager's does).
    Blocking: never waits beyond that short lock.
    """

    def __init__(self, bus: EventBus, monitor: StateMonitor) -> None:
        self._monitor = monitor
        self._lock = threading.Lock()  # serialises read-monitor-then-set-gauges
        self._unsubscribe: Callable[[], None] = bus.subscribe(self._on_event)

    def close(self) -> None:
        """Stop observing (the gauge keeps its last values)."""
        self._unsubscribe()

    def _on_event(self, event: ServableStateEvent) -> None:
        name = event.id.name
        if event.state is ServableState.AVAILABLE and event.duration_s is not None:
            LOAD_DURATION.labels(name).observe(event.duration_s)
        with self._lock:
            counts = dict.fromkeys(_STATES, 0)
            for status in self._monitor.states(name):
                if status.state in counts:
                    counts[status.state] += 1
            for state, count in counts.items():
                MODEL_VERSIONS.labels(name, state.name).set(count)


async def watch_event_loop_lag(observe: Callable[[float], None], interval_s: float = 0.1) -> None:
    """Until cancelled, every `interval_s`: observe how late the running loop resumed a task
    that slept `interval_s` (what any callback, a liveness probe's included, waits for).

    Anything that holds the loop (model code or request parsing on it) shows here; the timer's
    resolution (1 ms under uvloop) bounds the precision.
    """
    while True:
        started = time.perf_counter()
        await asyncio.sleep(interval_s)
        observe(max(0.0, time.perf_counter() - started - interval_s))
