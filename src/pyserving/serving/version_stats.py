"""Per-version inference statistics in Triton's meaning (the V2 statistics extension).

`VersionStats` holds one loaded version's counters; `StatsTable` finds them by handle. The request
path records into them (`serving/inference.py` for requests and unbatched calls,
`batching/scheduler.py` for batches, `serving/streaming.py` for streams);
`protocols/v2_statistics.py` reads them.

Every phase is per request except `execution_count` and the batch statistics (per model call):
a batch of 3 requests adds 3 to each phase's count, its duration to each request's
`compute_infer`, 1 to `execution_count` and its rows to `inference_count`.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any

from pyserving.core.handle import ServableHandle
from pyserving.core.ids import ServableId, ServableRequest
from pyserving.errors import ServableNotFound

__all__ = ["StatsTable", "VersionStats"]

#: phases a model call records, in VersionStats' field order
_CALL_PHASES = ("queue", "compute_input", "compute_infer", "compute_output")


class VersionStats:
    """One loaded version's counts and cumulative nanoseconds, updated under one lock.

    Thread-safety: every method may be called from any thread (a few additions under `_lock`).
    """

    __slots__ = ("_batches", "_counts", "_lock", "last_inference_ms")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: [success n, ns, fail n, ns, queue n, ns, input n, ns, infer n, ns, output n, ns,
        #:  inference_count, execution_count]
        self._counts = [0] * 14
        #: batch size → [executions, input ns, infer ns, output ns]; sizes are bounded by the
        #: model's max_batch_size (or the padded sizes allowed)
        self._batches: dict[int, list[int]] = {}
        self.last_inference_ms = 0

    def answered(self, ok: bool, ns: int) -> None:
        """One request answered (`ok`) or failed, `ns` after it reached the model."""
        i = 0 if ok else 2
        now_ms = time.time_ns() // 1_000_000
        with self._lock:
            counts = self._counts
            counts[i] += 1
            counts[i + 1] += ns
            self.last_inference_ms = now_ms

    def called(
        self, requests: int, rows: int, queue_ns: int, input_ns: int, infer_ns: int, output_ns: int
    ) -> None:
        """One model call that answered `requests` requests (`rows` batch items); `queue_ns`
        is their waits summed, the other phases last once for each of them."""
        with self._lock:
            c = self._counts
            c[4] += requests
            c[5] += queue_ns
            c[6] += requests
            c[7] += input_ns * requests
            c[8] += requests
            c[9] += infer_ns * requests
            c[10] += requests
            c[11] += output_ns * requests
            c[12] += rows
            c[13] += 1

    def batch_called(self, size: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One batch of `size` ran (its requests are counted by `called`)."""
        with self._lock:
            entry = self._batches.get(size)
            if entry is None:
                entry = self._batches[size] = [0, 0, 0, 0]
            entry[0] += 1
            entry[1] += input_ns
            entry[2] += infer_ns
            entry[3] += output_ns

    def snapshot(self) -> dict[str, Any]:
        """The statistics in Triton's shape, less name and version (cache phases read 0)."""
        with self._lock:
            c = list(self._counts)
            batches = sorted((size, list(entry)) for size, entry in self._batches.items())
            last = self.last_inference_ms
        phases = {
            "success": {"count": c[0], "ns": c[1]},
            "fail": {"count": c[2], "ns": c[3]},
        }
        for k, phase in enumerate(_CALL_PHASES):
            phases[phase] = {"count": c[4 + 2 * k], "ns": c[5 + 2 * k]}
        phases["cache_hit"] = {"count": 0, "ns": 0}
        phases["cache_miss"] = {"count": 0, "ns": 0}
        return {
            "last_inference": last,
            "inference_count": c[12],
            "execution_count": c[13],
            "inference_stats": phases,
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": {"count": n, "ns": input_ns},
                    "compute_infer": {"count": n, "ns": infer_ns},
                    "compute_output": {"count": n, "ns": output_ns},
                }
                for size, (n, input_ns, infer_ns, output_ns) in batches
            ],
        }


class StatsTable:
    """Each loaded version's VersionStats, made on its first request.

    A reloaded version (same id, new servable) starts afresh, and reads 0 until its first
    request: an entry remembers its servable through a weak reference, so a new servable never
    matches an old entry (not even one made at the old one's address). Bounded: making an entry
    drops the entries of versions no longer loaded, so the table holds the loaded versions and
    those unloaded since the last new one; entries never keep the servable alive.
    Thread-safety: `get` and `find` may be called from any thread.
    """

    def __init__(self, manager: Any) -> None:
        """`manager` answers `available_versions(name)` (AVAILABLE versions) and `get_handle`."""
        self._manager = manager
        self._lock = threading.Lock()  # guards replacing entries and pruning
        #: id → (the servable, weakly; stats); read without the lock (whole-entry assignment)
        self._entries: dict[ServableId, tuple[_Identity, VersionStats]] = {}

    def get(self, handle: ServableHandle) -> VersionStats:
        """`handle`'s version's statistics (made on its first request)."""
        servable = handle.servable
        entry = self._entries.get(handle.id)
        if entry is not None and entry[0].matches(servable):
            return entry[1]
        with self._lock:
            entry = self._entries.get(handle.id)
            if entry is not None and entry[0].matches(servable):
                return entry[1]
            for key in list(self._entries):
                if key != handle.id and key.version not in self._manager.available_versions(
                    key.name
                ):
                    del self._entries[key]
            stats = VersionStats()
            self._entries[handle.id] = (_Identity(servable), stats)
            return stats

    def find(self, name: str, version: int) -> VersionStats | None:
        """The statistics of `name` at `version` as loaded now; None when that servable has had
        no request (or the version is not loaded)."""
        servable_id = ServableId(name, version)
        entry = self._entries.get(servable_id)
        if entry is None:
            return None
        try:  # a counter increment, never a wait: which servable serves the version now
            handle = self._manager.get_handle(ServableRequest.specific(name, version))
        except ServableNotFound:
            return None
        try:
            return entry[1] if entry[0].matches(handle.servable) else None
        finally:
            handle.release()


class _Identity:
    """Which servable an entry belongs to, without keeping it alive: a weak reference, or the
    object's id for one that cannot be weakly referenced (a builtin, a class whose __slots__
    lack __weakref__), which a new object at a freed address could match."""

    __slots__ = ("_id", "_ref")

    def __init__(self, servable: object) -> None:
        self._id = id(servable)
        try:
            self._ref: weakref.ref[object] | None = weakref.ref(servable)
        except TypeError:
            self._ref = None

    def matches(self, servable: object) -> bool:
        if self._ref is None:
            return self._id == id(servable)
        return self._ref() is servable
