"""LoaderHarness: the state machine of one version, its load attempts and retry backoff."""

from __future__ import annotations

import enum
import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyserving.core.ids import ServableId
from pyserving.core.loader import Loader, PermanentLoadError
from pyserving.errors import Code, FailedPrecondition, ServingError

if TYPE_CHECKING:
    from pyserving.core.handle import VersionRefCount
    from pyserving.core.scheduler import ScheduledCall

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

#: ServingError codes that retrying the same files cannot fix
_PERMANENT_CODES = frozenset(
    {Code.FAILED_PRECONDITION, Code.INVALID_ARGUMENT, Code.UNIMPLEMENTED, Code.NOT_FOUND}
)
#: OSErrors that say the version's files are not what a loader needs
_PERMANENT_OS_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError)
#: parse errors of the model formats, by qualified class name (no optional import needed)
_PARSE_ERRORS = frozenset(
    {
        "google.protobuf.message.DecodeError",
        "onnxruntime.capi.onnxruntime_pybind11_state.InvalidProtobuf",
        "onnxruntime.capi.onnxruntime_pybind11_state.InvalidGraph",
        "onnxruntime.capi.onnxruntime_pybind11_state.NoSuchFile",
        "_pickle.UnpicklingError",
        "pickle.UnpicklingError",
        "zipfile.BadZipFile",
        "json.decoder.JSONDecodeError",
        "orjson.JSONDecodeError",
        "yaml.error.YAMLError",
        "builtins.UnicodeDecodeError",
    }
)


def is_permanent(exc: BaseException) -> bool:
    """True when retrying the load of the same files cannot succeed.

    The rule: a `PermanentLoadError`; a ServingError whose code is FAILED_PRECONDITION,
    INVALID_ARGUMENT, UNIMPLEMENTED or NOT_FOUND; a missing file or directory; or a parse error
    of a model format (protobuf, ONNX, pickle, zip, JSON, YAML, text encoding) — checked along the
    `raise ... from` chain. Anything else (I/O, memory, a flaky store) is worth retrying. A
    permanent failure is tried again when the version's files change or it is re-aspired.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (PermanentLoadError, *_PERMANENT_OS_ERRORS)):
            return True
        if isinstance(current, ServingError) and current.code in _PERMANENT_CODES:
            return True
        for cls in type(current).__mro__:
            if f"{cls.__module__}.{cls.__qualname__}" in _PARSE_ERRORS:
                return True
        current = current.__cause__
    return False


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
    A version stays LOADING across its attempts; between two it holds no thread: the harness only
    says how long to wait (`next_retry_delay`) and its owner schedules the next `attempt_load`.
    Thread-safety: every method may be called from any thread; `request_load` and `request_unload`
    are atomic test-and-set, so exactly one of several concurrent callers wins. The Manager makes
    every state change under its own lock, so states change in the order it decides.
    Blocking: `attempt_load` and `run_unload` run Loader code; call them on a lifecycle thread.
    Ownership: a loaded servable is held only from `loaded()` until `run_unload()`; `discard`
    unloads one that never reached `loaded()`, so no failure path leaks a loaded model.
    """

    def __init__(
        self,
        servable_id: ServableId,
        loader: Loader | None,
        options: HarnessOptions,
        revision: str = "",
    ) -> None:
        self.id = servable_id
        self.loader = loader
        self.revision = revision
        self.options = options
        self._lock = threading.Lock()  # guards _state, _error, _error_code, servable
        self._state = HarnessState.NEW
        self._error: str | None = None
        self._error_code = Code.OK
        self._cancelled = threading.Event()
        self._attempts = 0
        self.servable: object = None
        #: whether the source still wants this version; owned by the Manager (under its lock)
        self.is_aspired = True
        #: the request refcount once serving; owned by the Manager (under its lock)
        self.ref: VersionRefCount | None = None
        #: the estimated RAM in bytes once asked; owned by the Manager (under its lock)
        self.estimate: int | None = None
        #: the scheduled next attempt while waiting out a backoff; owned by the Manager
        self.retry: ScheduledCall | None = None
        #: when LOADING began (perf_counter), for the load duration; owned by the Manager
        self.load_started_s = 0.0

    @property
    def state(self) -> HarnessState:
        return self._state

    @property
    def error(self) -> str | None:
        """The reason of ERROR, or while retrying the last attempt's error."""
        return self._error

    @property
    def error_code(self) -> Code:
        return self._error_code

    @property
    def attempts(self) -> int:
        """Load attempts made so far."""
        return self._attempts

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

    def start_loading(self) -> None:
        """LOAD_APPROVED → LOADING: attempts may run from now on."""
        self._transition(S.LOAD_APPROVED, S.LOADING, "Load not approved")

    def attempt_load(self) -> object:
        """Run the Loader once and return what it loaded (the state does not change: the owner
        calls `loaded()` or `discard()`); raises what the Loader raises.

        Blocking: runs `Loader.load()`.
        """
        with self._lock:
            if self._state is not S.LOADING:
                raise FailedPrecondition(f"Not loading: servable {self.id} is {self._state.value}")
            self._attempts += 1
        assert self.loader is not None
        return self.loader.load()

    def loaded(self, servable: object) -> None:
        """LOADING → READY with the servable an attempt returned; clears the retry error."""
        with self._lock:
            if self._state is not S.LOADING:
                raise FailedPrecondition(f"Not loading: servable {self.id} is {self._state.value}")
            self.servable = servable
            self._state = S.READY
            self._error = None
            self._error_code = Code.OK

    def discard(self) -> None:
        """Unload what a failed attempt loaded (it never served); a Loader that raises is logged.

        Blocking: runs `Loader.unload()`.
        """
        try:
            if self.loader is not None:
                self.loader.unload()
        except Exception:
            logger.exception("unloading %s after its failed load raised", self.id)

    def next_retry_delay(self, exc: BaseException) -> float | None:
        """Record a failed attempt; the seconds to wait before the next, or None to give up.

        Gives up on a permanent error (`is_permanent`), once the retries are spent, or when
        retries were cancelled. Until then the state stays LOADING and `error` says why.
        """
        message = str(exc) or type(exc).__name__
        code = exc.code if isinstance(exc, ServingError) else Code.UNKNOWN
        with self._lock:
            self._error = message
            self._error_code = code
            attempts = self._attempts
        if (
            self._cancelled.is_set()
            or attempts > self.options.max_num_load_retries
            or is_permanent(exc)
        ):
            return None
        interval_s = max(0.0, self.options.load_retry_interval_micros / 1e6)
        backoff_s: float = interval_s * 2 ** (attempts - 1)
        return min(backoff_s, self.options.max_retry_interval_s)

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

    def start_unloading(self) -> None:
        self._transition(S.QUIESCED, S.UNLOADING, "Not quiesced")

    def run_unload(self) -> None:
        """Release the servable (state stays UNLOADING until `finish_unload`); a Loader that
        raises is logged and the version is dropped anyway.

        Blocking: runs `Loader.unload()`.
        """
        if self._state is not S.UNLOADING:
            raise FailedPrecondition(f"Not unloading: servable {self.id} is {self._state.value}")
        try:
            if self.loader is not None:
                self.loader.unload()
        except Exception:
            logger.exception("unloading %s raised; the version is dropped anyway", self.id)
        with self._lock:
            self.servable = None

    def finish_unload(self) -> None:
        """UNLOADING → DISABLED."""
        self._transition(S.UNLOADING, S.DISABLED, "Not unloading")

    def fail(self, error: str, code: Code = Code.UNKNOWN) -> None:
        """Move to ERROR with a reason (no-op when already final)."""
        with self._lock:
            if self._state in (S.DISABLED, S.ERROR):
                return
            self._state = S.ERROR
            self._error = error
            self._error_code = code

    @property
    def retries_cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel_load_retries(self) -> None:
        """Stop retrying (the version is no longer aspired): a failing attempt is the last."""
        self._cancelled.set()

    def resume_load_retries(self) -> None:
        """The version is aspired again: a load still in progress may keep retrying."""
        self._cancelled.clear()
