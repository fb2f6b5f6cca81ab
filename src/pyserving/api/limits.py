"""The server-wide budget of request bytes in flight, shared by REST and gRPC.

Each transport bounds one request (`--max-request-bytes`); this bounds all of them together. A
REST body reserves its bytes as it arrives (its Content-Length at once, when it declares one), a
gRPC message when it has arrived, and both hold them until their answer is sent. A request that
would pass the budget is refused with 503 / UNAVAILABLE instead of taking more memory, so a burst
of large requests costs the server a bounded amount however many clients send them.
"""

from __future__ import annotations

import threading

from pyserving.errors import Unavailable

__all__ = ["RequestBytesBudget", "Reservation"]


class RequestBytesBudget:
    """Bytes of request bodies and messages the server holds at once, up to a capacity.

    One request is always admitted when nothing else is in flight (so a capacity below
    `--max-request-bytes` cannot refuse every large request); 0 means no budget.

    Thread-safety: usable from any thread; one lock guards the count.
    Blocking: never waits: `reserve_nowait` admits or raises.
    Ownership: whoever reserved releases the same amount, once (use try/finally).
    """

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0, got {capacity_bytes}")
        self.capacity_bytes = capacity_bytes
        self._lock = threading.Lock()  # guards _used, and each Reservation's fields
        self._used = 0

    @property
    def used_bytes(self) -> int:
        """Bytes reserved now."""
        return self._used

    def reserve_nowait(self, size_bytes: int, held_bytes: int = 0) -> None:
        """Count `size_bytes` more in flight; raises Unavailable (503 / UNAVAILABLE) when that
        would pass the capacity while other requests are in flight (`held_bytes`: what the
        caller's own request holds already, which is not another request)."""
        if size_bytes <= 0 or not self.capacity_bytes:
            return
        with self._lock:
            self._reserve_locked(size_bytes, held_bytes)

    def _reserve_locked(self, size_bytes: int, held_bytes: int) -> None:
        used = self._used
        if used > held_bytes and used + size_bytes > self.capacity_bytes:
            raise Unavailable(
                f"the server holds {used} bytes of requests in flight; {size_bytes} more"
                f" would pass its budget of {self.capacity_bytes}"
                " (--max-inflight-request-bytes): retry later"
            )
        self._used = used + size_bytes

    def release(self, size_bytes: int) -> None:
        """Count `size_bytes` reserved earlier as answered."""
        if size_bytes <= 0 or not self.capacity_bytes:
            return
        with self._lock:
            self._used -= size_bytes


class Reservation:
    """What one request holds in a budget (its body, then what decoding it builds), released
    together when it is answered.

    Thread-safety: `reserve` may be called from any thread (a codec thread decoding the request).
    Ownership: the request's edge calls `release` once, when it has answered; a `reserve` after
    that raises Unavailable, so decoding that outlives its request cannot hold bytes for ever.
    """

    __slots__ = ("_budget", "_closed", "_held")

    def __init__(self, budget: RequestBytesBudget) -> None:
        self._budget = budget
        # Both guarded by the budget's lock, which a reserve takes anyway: one lock per
        # request, not a lock of its own taken around the budget's (every request makes one).
        self._held = 0
        self._closed = False

    def reserve(self, size_bytes: int) -> None:
        """Hold `size_bytes` more for this request (`RequestBytesBudget.reserve_nowait`)."""
        budget = self._budget
        with budget._lock:
            if self._closed:
                raise Unavailable("the request was answered before it was decoded")
            if size_bytes > 0 and budget.capacity_bytes:
                budget._reserve_locked(size_bytes, self._held)
            self._held += max(size_bytes, 0)

    def release(self) -> None:
        """Release everything this request holds; later reserves are refused."""
        budget = self._budget
        with budget._lock:
            held, self._held, self._closed = self._held, 0, True
            if budget.capacity_bytes:
                budget._used -= held
