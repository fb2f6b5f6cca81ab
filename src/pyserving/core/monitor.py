"""The event bus lifecycle transitions are published on, and the state monitor that keeps them."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from pyserving.core.ids import ServableId, ServableState, ServableStateEvent

logger = logging.getLogger("pyserving.lifecycle")

Subscriber = Callable[[ServableStateEvent], None]


class EventBus:
    """Delivers each published event to every subscriber, in order, on the publisher's thread.

    Thread-safety: publish and subscribe from any thread. A subscriber must be cheap and must not
    publish or call the Manager's mutating methods (it runs under the publisher's control, and
    the Manager delivers one event at a time); one that raises is logged and skipped.
    Ordering: the Manager publishes from one thread at a time, in the order it decided the state
    changes, so every subscriber sees each version's states in that order.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _subscribers (copy-on-write)
        self._subscribers: tuple[Subscriber, ...] = ()

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Add a subscriber; returns a function that removes it."""
        with self._lock:
            self._subscribers = (*self._subscribers, subscriber)

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers = tuple(s for s in self._subscribers if s is not subscriber)

        return unsubscribe

    def publish(self, event: ServableStateEvent) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber(event)
            except Exception:
                logger.exception("event subscriber failed on %s", event)


@dataclass(frozen=True, slots=True)
class VersionStatus:
    """The last known state of one version, with its error: the one that ended it (END), or the
    last failed attempt's while it waits to retry (LOADING)."""

    id: ServableId
    state: ServableState
    error: str | None = None
    error_code: str = "OK"


class StateMonitor:
    """Keeps the latest state of every version from the event bus and answers status queries.

    Thread-safety: all methods may be called from any thread.
    Blocking: `wait_until*` methods wait (bounded by their timeout); everything else never waits.
    History is bounded: per stream only the newest `max_ended_per_stream` ended versions are kept,
    so status does not grow with every version a long-running server has ever seen.
    """

    def __init__(self, bus: EventBus, max_ended_per_stream: int = 8) -> None:
        self._max_ended = max_ended_per_stream
        self._cond = threading.Condition()  # guards _streams
        self._streams: dict[str, dict[int, VersionStatus]] = {}
        bus.subscribe(self._on_event)

    def _on_event(self, event: ServableStateEvent) -> None:
        status = VersionStatus(event.id, event.state, event.error, event.error_code)
        with self._cond:
            versions = self._streams.setdefault(event.id.name, {})
            current = versions.get(event.id.version)
            if current is not None and _goes_back(current.state, event.state):
                # The Manager delivers in decision order, so this means a publisher outside it
                # raced; a state never moves back, except a new life (START) after END.
                logger.warning(
                    "ignoring %s for %s: it is already %s",
                    event.state.name,
                    event.id,
                    current.state.name,
                )
                return
            versions[event.id.version] = status
            self._forget_old_ended_locked(versions)
            self._cond.notify_all()

    def _forget_old_ended_locked(self, versions: dict[int, VersionStatus]) -> None:
        ended = sorted(v for v, s in versions.items() if s.state is ServableState.END)
        for version in ended[: max(0, len(ended) - self._max_ended)]:
            del versions[version]

    def states(self, name: str) -> list[VersionStatus]:
        """Every known version of `name`, highest first; [] for an unknown name."""
        with self._cond:
            versions = self._streams.get(name, {})
            return [versions[v] for v in sorted(versions, reverse=True)]

    def state(self, servable_id: ServableId) -> VersionStatus | None:
        with self._cond:
            return self._streams.get(servable_id.name, {}).get(servable_id.version)

    def names(self) -> list[str]:
        with self._cond:
            return sorted(self._streams)

    def wait_until(self, predicate: Callable[[], bool], timeout_s: float | None) -> bool:
        """Wait until `predicate()` (evaluated under the monitor's lock) holds; False on timeout."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout_s)

    def wait_until_available(
        self, name: str, version: int | None = None, timeout_s: float | None = None
    ) -> bool:
        """Wait until `name` (or that version of it) is AVAILABLE; False on timeout."""

        def available() -> bool:
            versions = self._streams.get(name, {})
            if version is not None:
                status = versions.get(version)
                return status is not None and status.state is ServableState.AVAILABLE
            return any(s.state is ServableState.AVAILABLE for s in versions.values())

        return self.wait_until(available, timeout_s)

    def wait_until_settled(self, name: str, timeout_s: float | None = None) -> bool:
        """Wait until no version of `name` is starting or loading; a stream with none is settled.

        A version waiting out a retry backoff (LOADING with the last attempt's error) counts as
        settled: no attempt is under way, and a start-up wait must not last its whole backoff.
        """

        def settled() -> bool:
            versions = self._streams.get(name, {})
            return all(
                s.state is not ServableState.START
                and (s.state is not ServableState.LOADING or s.error is not None)
                for s in versions.values()
            )

        return self.wait_until(settled, timeout_s)


def _goes_back(current: ServableState, new: ServableState) -> bool:
    if new is ServableState.START and current is ServableState.END:
        return False
    return new < current


def why_unavailable(states: list[VersionStatus], shown: int = 3) -> str:
    """Why a stream with these version states (highest first) has no AVAILABLE version, in
    words for a readiness answer, e.g. "version 2 failed: CRC mismatch"."""
    if not states:
        return "no versions found under its base path"
    parts = []
    for status in states[:shown]:
        version = f"version {status.id.version}"
        if status.state is ServableState.END and status.error:
            parts.append(f"{version} failed: {status.error}")
        elif status.state is ServableState.LOADING and status.error:
            parts.append(f"{version} is loading, retrying after: {status.error}")
        elif status.state in (ServableState.START, ServableState.LOADING):
            parts.append(f"{version} is loading")
        elif status.state is ServableState.UNLOADING:
            parts.append(f"{version} is unloading")
        elif status.state is ServableState.END:
            parts.append(f"{version} was unloaded")
    return "; ".join(parts) or "no AVAILABLE version"
