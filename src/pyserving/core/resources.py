"""ResourceTracker: the RAM budget loaded versions share."""

from __future__ import annotations

import threading

from pyserving.core.ids import ServableId


class ResourceTracker:
    """Reserves RAM per version against a total; `None` total means unlimited.

    Thread-safety: every method may be called from any thread.
    Blocking: never waits; the Manager decides whether to wait for running unloads and retry.
    """

    def __init__(self, total_bytes: int | None = None) -> None:
        self.total_bytes = total_bytes
        self._lock = threading.Lock()  # guards _reserved
        self._reserved: dict[ServableId, int] = {}

    def try_reserve(self, servable_id: ServableId, size_bytes: int) -> bool:
        """Reserve `size_bytes` for a version; False (nothing reserved) when it does not fit."""
        with self._lock:
            if self.total_bytes is not None:
                used = sum(self._reserved.values())
                if used + size_bytes > self.total_bytes:
                    return False
            self._reserved[servable_id] = size_bytes
            return True

    def update(self, servable_id: ServableId, size_bytes: int) -> None:
        """Replace a reservation with the figure measured after load (it never grows)."""
        with self._lock:
            if servable_id in self._reserved:
                self._reserved[servable_id] = min(self._reserved[servable_id], size_bytes)

    def release(self, servable_id: ServableId) -> None:
        with self._lock:
            self._reserved.pop(servable_id, None)

    def reserved(self, servable_id: ServableId) -> int:
        """The bytes held for one version (0 when none)."""
        with self._lock:
            return self._reserved.get(servable_id, 0)

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(self._reserved.values())

    def describe(self) -> str:
        total = "unlimited" if self.total_bytes is None else str(self.total_bytes)
        return f"{self.used_bytes} of {total} bytes in use"
