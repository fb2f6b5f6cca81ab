"""Per-version reference counts and the handles requests hold while they compute."""

from __future__ import annotations

import threading
from typing import Any

from pyserving.core.ids import ServableId


class VersionRefCount:
    """Counts the requests running on one loaded version; closing it waits for them to end.

    Thread-safety: every method may be called from any thread.
    Blocking: `try_acquire` and `release` never wait; `close_and_wait` waits for in-flight holders.
    Invariant: once closed, no new holder is admitted, so after `close_and_wait` returns no request
    can touch the servable — the Manager may then unload it.
    """

    __slots__ = ("_closed", "_cond", "_count", "_lock", "id", "servable")

    def __init__(self, servable_id: ServableId, servable: object) -> None:
        self.id = servable_id
        self.servable = servable
        # guards _count and _closed
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._count = 0
        self._closed = False

    def try_acquire(self) -> bool:
        """Take one reference; False once the version is closing (caller looks it up again)."""
        with self._lock:
            if self._closed:
                return False
            self._count += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._count -= 1
            if self._count == 0 and self._closed:
                self._cond.notify_all()

    def close_and_wait(self, timeout_s: float | None = None) -> bool:
        """Refuse new holders, then wait until current holders release. True when drained."""
        with self._lock:
            self._closed = True
            return self._cond.wait_for(lambda: self._count == 0, timeout_s)

    @property
    def in_flight(self) -> int:
        return self._count


class ServableHandle:
    """Keeps one loaded version alive for the length of one request.

    Thread-safety: usable from any thread; `release()` is atomic and idempotent — of any number
    of concurrent calls exactly one releases the reference.
    Ownership: the caller releases it (use `with`); holding it delays this version's unload,
    no other.
    Blocking: acquiring and releasing never wait.
    """

    __slots__ = ("_ref", "id", "servable")

    def __init__(self, ref: VersionRefCount) -> None:
        # A one-item list: list.pop() takes the item out in one step, so two releasing threads
        # can never both get it (a read then a write of an attribute could interleave).
        self._ref: list[VersionRefCount] = [ref]
        self.id: ServableId = ref.id
        # Any: core never looks inside a servable; its type is the platform's (what Loader.load
        # returned), which the serving layer relies on
        self.servable: Any = ref.servable

    def release(self) -> None:
        try:
            ref = self._ref.pop()
        except IndexError:
            return  # already released
        ref.release()

    def __enter__(self) -> ServableHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __del__(self) -> None:
        # A forgotten handle must not block an unload for ever.
        self.release()
