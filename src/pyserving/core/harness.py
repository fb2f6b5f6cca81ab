"""LoaderHarness: the state machine of one version, with load retries and exponential backoff."""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyserving.core.ids import ServableId
from pyserving.core.loader import Loader
from pyserving.errors import Code, FailedPrecondition, ServingError

logger = logging.getLogger("pyserving.lifecycle")


class HarnessState(enum.Enum):
    """Finer internal states of one version (TF Serving's LoaderHarness states)."""

    NEW = "new"
    LOAD_REQUESTED = "load-requested"
    LOAD_APPROVED = "load-approved"
    LOADING = "loading"
    READY = "ready"
    UNLOAD_REQUESTED = "unload-requested"
    QUIESCING = "quiescing"
    QUIESCED = "quiesced"
    UNLOADING = "unloading"
    DISABLED = "disabled"
    ERROR = "error"


S = HarnessState
_LEGAL: dict[HarnessState, frozenset[HarnessState]] = {
    S.NEW: frozenset({S.LOAD_REQUESTED}),
    S.LOAD_REQUESTED: frozenset({S.LOAD_APPROVED}),
    S.LOAD_APPROVED: frozenset({S.LOADING}),
    S.LOADING: frozenset({S.READY}),
    S.READY: frozenset({S.UNLOAD_REQUESTED}),
    S.UNLOAD_REQUESTED: frozenset({S.QUIESCING}),
    S.QUIESCING: frozenset({S.QUIESCED}),
    S.QUIESCED: frozenset({S.UNLOADING}),
    S.UNLOADING: frozenset({S.DISABLED}),
    S.DISABLED: frozenset(),
    S.ERROR: frozenset(),
}

WaitFn = Callable[[threading.Event, float], bool]


def _wait_on_event(event: threading.Event, timeout_s: float) -> bool:
    return event.wait(timeout_s)


@dataclass(frozen=True, slots=True)
class HarnessOptions:
    """Load retries: `max_num_load_retries` extra attempts, backoff doubling from the interval."""

    max_num_load_retries: int = 5
    load_retry_interval_micros: int = 1_000_000
    max_retry_interval_s: float = 60.0


class LoaderHarness:
    """Owns one version's Loader and walks it through its lifecycle.

    Legal transitions (anything else raises FailedPrecondition and changes nothing):
        NEW → LOAD_REQUESTED → LOAD_APPROVED → LOADING → READY → UNLOAD_REQUESTED → QUIESCING
        → QUIESCED → UNLOADING → DISABLED; and any non-final state → ERROR.
    Thread-safety: every method may be called from any thread; `request_load` and `request_unload`
    are atomic test-and-set, so exactly one of several concurrent callers wins.
    Blocking: `load()` runs the Loader with retries and sleeps between attempts (backoff); call it
    on a load thread. `cancel_load_retries()` wakes it and stops further attempts.
    """

    def __init__(
        self,
        servable_id: ServableId,
        loader: Loader | None,
        options: HarnessOptions,
        revision: str = "",
        wait: WaitFn = _wait_on_event,
    ) -> None:
        self.id = servable_id
        self.loader = loader
        self.revision = revision
        self.options = options
        self._wait = wait
        self._lock = threading.Lock()  # guards _state, _error, _error_code, servable
        self._state = HarnessState.NEW
        self._error: str | None = None
        self._error_code = Code.OK
        self._cancelled = threading.Event()
        self.servable: Any = None
        #: whether the source still wants this version; owned by the Manager (under its lock)
        self.is_aspired = True
        #: the request refcount once serving; owned by the Manager (under its lock)
        self.ref: Any = None

    @property
    def state(self) -> HarnessState:
        return self._state

    @property
    def error(self) -> str | None:
        return self._error

    @property
    def error_code(self) -> Code:
        return self._error_code

    def _transition(self, expected: HarnessState, target: HarnessState, refusal: str) -> None:
        with self._lock:
            if self._state is not expected or target not in _LEGAL[self._state]:
                raise FailedPrecondition(
                    f"{refusal}: servable {self.id} is {self._state.value}, "
                    f"cannot go to {target.value}"
                )
            self._state = target

    def request_load(self) -> None:
        """NEW → LOAD_REQUESTED; raises FailedPrecondition "Duplicate load request" otherwise."""
        self._transition(S.NEW, S.LOAD_REQUESTED, "Duplicate load request")

    def approve_load(self) -> None:
        self._transition(S.LOAD_REQUESTED, S.LOAD_APPROVED, "Load not requested")

    def request_unload(self) -> None:
        """READY → UNLOAD_REQUESTED; refuses when not loaded or an unload is already under way."""
        self._transition(
            S.READY,
            S.UNLOAD_REQUESTED,
            "Servable not loaded, or unload already requested/ongoing",
        )

    def start_quiescing(self) -> None:
        self._transition(S.UNLOAD_REQUESTED, S.QUIESCING, "Unload not requested")

    def done_quiescing(self) -> None:
        self._transition(S.QUIESCING, S.QUIESCED, "Not quiescing")

    def fail(self, error: str, code: Code = Code.UNKNOWN) -> None:
        """Move to ERROR with a reason (no-op when already final)."""
        with self._lock:
            if self._state in (S.DISABLED, S.ERROR):
                return
            self._state = S.ERROR
            self._error = error
            self._error_code = code

    def cancel_load_retries(self) -> None:
        """Stop retrying (the version is no longer aspired); wakes a load waiting on backoff."""
        self._cancelled.set()

    def resume_load_retries(self) -> None:
        """The version is aspired again: let a load still in progress keep retrying."""
        self._cancelled.clear()

    def load(self) -> bool:
        """LOAD_APPROVED → LOADING → READY, retrying failures with backoff; False means ERROR.

        Blocking: runs the Loader and sleeps between attempts.
        """
        self._transition(S.LOAD_APPROVED, S.LOADING, "Load not approved")
        assert self.loader is not None
        attempts = self.options.max_num_load_retries + 1
        interval_s = max(0.0, self.options.load_retry_interval_micros / 1e6)
        error: BaseException | None = None
        for attempt in range(attempts):
            if attempt > 0:
                if self._cancelled.is_set() or self._wait(self._cancelled, interval_s):
                    break
                interval_s = min(interval_s * 2, self.options.max_retry_interval_s)
            try:
                servable = self.loader.load()
            except Exception as exc:
                error = exc
                logger.warning(
                    "loading %s failed (attempt %d of %d): %s", self.id, attempt + 1, attempts, exc
                )
                if not _is_retriable(exc):
                    break
                continue
            with self._lock:
                self.servable = servable
                self._state = S.READY
            return True
        if error is None:
            self.fail("Loading of servable cancelled", Code.CANCELLED)
        else:
            code = error.code if isinstance(error, ServingError) else Code.UNKNOWN
            self.fail(str(error) or type(error).__name__, code)
        return False

    def unload(self) -> None:
        """QUIESCED → UNLOADING → DISABLED; a Loader that raises while unloading is logged."""
        self._transition(S.QUIESCED, S.UNLOADING, "Not quiesced")
        try:
            if self.loader is not None:
                self.loader.unload()
        except Exception:
            logger.exception("unloading %s raised; the version is dropped anyway", self.id)
        with self._lock:
            self.servable = None
            self._state = S.DISABLED


def _is_retriable(exc: BaseException) -> bool:
    # A missing platform or a refused request does not fix itself by trying again.
    return not (
        isinstance(exc, ServingError)
        and exc.code in (Code.FAILED_PRECONDITION, Code.INVALID_ARGUMENT, Code.UNIMPLEMENTED)
    )
