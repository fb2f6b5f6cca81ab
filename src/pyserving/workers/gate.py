"""GatedManager: what a worker's InferenceService sees of its Manager under `--workers`.

Requests naming no version go to the gate's `latest`, and status shows a version AVAILABLE only
when the gate publishes it (AVAILABLE in every listening worker), so that every worker answers
as one server during a version swap (aspired_feed.py explains the order).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pyserving.core.handle import ServableHandle
from pyserving.core.ids import ServableRequest, ServableState
from pyserving.core.manager import Manager
from pyserving.core.monitor import StateMonitor, VersionStatus
from pyserving.errors import NotFound
from pyserving.workers.aspired_feed import Gate


class GatedManager:
    """The Manager, seen through the supervisor's last Gate.

    Thread-safety: any thread; the gate is replaced whole (`set_gate`) and read without a lock.
    Blocking: as the Manager's methods it passes through; nothing here waits.
    """

    def __init__(self, manager: Manager) -> None:
        self._manager = manager
        self._gate = Gate()
        self.monitor = _GatedMonitor(manager.monitor, self)

    def set_gate(self, gate: Gate) -> None:
        self._gate = gate

    def published(self, name: str) -> frozenset[int] | None:
        """The versions of `name` status may call AVAILABLE; None: not gated."""
        return self._gate.published.get(name)

    def get_handle(self, request: ServableRequest) -> ServableHandle:
        """A handle as the Manager gives it; a request naming no version gets the gate's latest
        version while this worker serves it."""
        if request.version is None and request.label is None:
            latest = self._gate.latest.get(request.name)
            if latest is not None:
                try:
                    return self._manager.get_handle(ServableRequest(request.name, latest))
                except NotFound:
                    pass  # unloaded here since the gate moved: this worker's latest answers
        return self._manager.get_handle(request)

    def available_versions(self, name: str) -> list[int]:
        """AVAILABLE versions of `name` that the gate publishes, highest first."""
        versions = self._manager.available_versions(name)
        published = self.published(name)
        return versions if published is None else [v for v in versions if v in published]

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._manager, attribute)


class _GatedMonitor:
    """The Manager's StateMonitor, where an AVAILABLE version the gate does not publish yet
    shows as LOADING (it is, for the server as a whole)."""

    def __init__(self, monitor: StateMonitor, view: GatedManager) -> None:
        self._monitor = monitor
        self._view = view

    def states(self, name: str) -> list[VersionStatus]:
        states = self._monitor.states(name)
        published = self._view.published(name)
        if published is None:
            return states
        return [
            dataclasses.replace(s, state=ServableState.LOADING)
            if s.state is ServableState.AVAILABLE and s.id.version not in published
            else s
            for s in states
        ]

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._monitor, attribute)
