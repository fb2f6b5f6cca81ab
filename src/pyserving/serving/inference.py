"""InferenceService: the one protocol-neutral request path under the REST (and later gRPC) codecs.

A codec turns its wire format into `dict[str, np.ndarray]`, then:

    with service.acquire(name, version, label) as handle:       # NotFound / InvalidInput
        signature = service.signature(handle, signature_name)    # NotFound
        outputs = await service.run(handle, signature, inputs, output_names, deadline)

`run` validates the inputs against the signature and executes the servable on a thread pool, or,
for a model that batches, enqueues the request on the shared BatchScheduler. The one exception: a
call its signature's measured cost predicts to take less than `inline_budget_seconds` runs on the
event loop itself, since handing it to a thread and back would cost more than the call.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from pyserving.batching import BatchingOptions, BatchingPolicy, BatchScheduler, BatchTask
from pyserving.core.handle import ServableHandle
from pyserving.core.ids import ServableRequest
from pyserving.core.monitor import VersionStatus
from pyserving.errors import (
    DeadlineExceeded,
    InvalidInput,
    ModelError,
    NotFound,
    ServingError,
    Unavailable,
)
from pyserving.platforms.signature import DEFAULT_SIGNATURE, NUMPY_TO_V2, Signature

__all__ = [
    "InferenceOptions",
    "InferenceService",
    "LabelResolver",
    "VersionRouter",
    "answered_version",
]

logger = logging.getLogger("pyserving.inference")

#: (model name, label) → version, or None for a label the model does not have
LabelResolver = Callable[[str, str], int | None]
#: model name → the version a request naming no version or label goes to (a traffic split),
#: or None for the highest AVAILABLE one
VersionRouter = Callable[[str], int | None]
#: the version the current request ran on (set by `InferenceService.run`); an API edge resets it
#: to None when a request starts and reads it when counting the request in the metrics
answered_version: ContextVar[int | None] = ContextVar("pyserving_answered_version", default=None)


class _Monitor(Protocol):
    def states(self, name: str) -> list[VersionStatus]: ...


class _Manager(Protocol):
    """What InferenceService needs of `pyserving.core.manager.Manager`."""

    monitor: _Monitor

    def get_handle(self, request: ServableRequest) -> ServableHandle: ...

    def available_versions(self, name: str) -> list[int]: ...

    def stream_names(self) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class InferenceOptions:
    """Limits and threads of the request path."""

    #: threads that run servables when batching is off
    executor_threads: int = 4
    #: requests queued or running at once; more are refused at once with Unavailable (503)
    max_pending_requests: int = 1024
    #: the most elements one input tensor may have (codecs check it before allocating)
    max_tensor_elements: int = 1 << 26
    #: an unbatched call predicted (from the signature's measured seconds per row) to take less
    #: than this runs on the event loop: the executor round trip costs ~40 µs. 0 = never inline
    inline_budget_seconds: float = 100e-6


class InferenceService:
    """Resolves a model spec to a handle, validates inputs, runs the servable (off the event loop
    unless the call is cheaper than the hop to a thread).

    Thread-safety: `acquire`, `signature` and the status helpers may be called from any thread;
    `run` is a coroutine and may be awaited concurrently on one or more event loops.
    Ownership: the caller releases the handle (use `with`). When `run` gives up on a servable call
    that already started (deadline, cancellation), it keeps that version referenced until the call
    returns, so the version is never unloaded under a running request.
    Blocking: nothing here waits on another thread except `close(wait=True)`.
    Cancellation: a cancelled or expired request whose call has not started (on the executor, or
    in a batch queue) is dropped; one that has started runs to completion on its thread and its
    result is discarded.
    """

    def __init__(
        self,
        manager: _Manager,
        options: InferenceOptions | None = None,
        label_resolver: LabelResolver | None = None,
        batching: BatchingPolicy | None = None,
        version_router: VersionRouter | None = None,
    ) -> None:
        self.options = options or InferenceOptions()
        self._manager = manager
        self._label_resolver = label_resolver
        self._version_router = version_router
        # Replaced whole (GIL-atomic) by set_batching_policy; read once per request.
        self._batching = batching or BatchingPolicy()
        self._scheduler_lock = threading.Lock()  # guards creating _scheduler
        self._scheduler: BatchScheduler | None = None
        self._closed = False
        self._executor = ThreadPoolExecutor(
            max_workers=max(1, self.options.executor_threads),
            thread_name_prefix="pyserving-infer",
        )
        self._pending_lock = threading.Lock()  # guards _pending
        self._pending = 0
        # id(signature) → its precomputed plan; the plan holds the signature, so the id is not
        # reused while the entry exists. Written only with whole-entry assignment (GIL-atomic).
        self._plans: dict[int, _SignaturePlan] = {}

    # --- resolving --------------------------------------------------------------------------

    def acquire(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> ServableHandle:
        """A handle on `name` at `version`, at `label`'s version, or else at the version the
        traffic split picks (the highest AVAILABLE one when the model has no split).

        Raises InvalidInput when both a version and a label are given; NotFound for an unknown
        label, model or version.
        """
        if label is None and version is None and self._version_router is not None:
            routed = self._version_router(name)
            if routed is not None:
                try:
                    return self._manager.get_handle(ServableRequest(name, routed))
                except NotFound:
                    pass  # it stopped serving since it was picked: the latest answers instead
        if label is not None:
            if version is not None:
                raise InvalidInput(
                    f'model "{name}": give a version or a label, not both (version {version},'
                    f' label "{label}")'
                )
            resolved = self._label_resolver(name, label) if self._label_resolver else None
            if resolved is None:
                raise NotFound(f"Unrecognized servable version label: {label}")
            version = resolved
        return self._manager.get_handle(ServableRequest(name, version))

    def signature(self, handle: ServableHandle, name: str | None = None) -> Signature:
        """The named signature; None or "" means "serving_default", or the only one there is.

        Raises NotFound with TF Serving's text for an unknown signature name.
        """
        signatures: Mapping[str, Signature] = handle.servable.signatures
        if name:
            found = signatures.get(name)
        else:
            name = DEFAULT_SIGNATURE
            found = signatures.get(name)
            if found is None and len(signatures) == 1:
                found = next(iter(signatures.values()))
        if found is None:
            raise NotFound(f'Serving signature name: "{name}" not found in signature def')
        return found

    # --- running ----------------------------------------------------------------------------

    async def run(
        self,
        handle: ServableHandle,
        signature: Signature,
        inputs: dict[str, np.ndarray],
        output_names: Sequence[str] | None = None,
        deadline: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Validate `inputs`, run the servable (executor, batch queue, or inline when its
        measured cost is under the inline budget), return the requested outputs.

        `deadline` is a `time.monotonic()` instant covering queueing and execution. Outputs come
        in `output_names` order (all of the signature's outputs, in its order, when None).
        Raises InvalidInput (inputs or output names), DeadlineExceeded, Unavailable (too many
        requests pending), ModelError (the servable raised; a ServingError it raises passes
        through unchanged).
        """
        answered_version.set(handle.id.version)  # for the API edge's request metrics
        plan = self._plan(signature)
        rows = plan.validate(inputs, self.options.max_tensor_elements)
        wanted = plan.outputs if output_names is None else plan.check_outputs(output_names)
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceeded("Deadline exceeded before the request could run")
        # A signature with an input that is not batched on dimension 0 runs unbatched.
        batching = (
            self._batching.options_for(
                handle.id.name, getattr(handle.servable, "version_batching", None)
            )
            if plan.batchable
            else None
        )
        if batching is None and plan.cost.runs_inline(rows):
            return plan.collect(_execute(handle.servable, plan, inputs, rows, None, True), wanted)
        with self._pending_lock:
            if self._pending >= self.options.max_pending_requests:
                raise Unavailable(f"too many requests pending ({self._pending}); try again later")
            self._pending += 1
        try:
            if batching is None:
                job = self._executor.submit(
                    _execute, handle.servable, plan, inputs, rows, deadline, False
                )
            else:
                job = self._schedule(handle, signature.name, inputs, deadline, batching)
        except RuntimeError as exc:  # the executor was shut down
            self._done_pending(None)
            raise Unavailable("the server is shutting down") from exc
        except ServingError:  # refused by the batch queue: full, task too large, closing
            self._done_pending(None)
            raise
        job.add_done_callback(self._done_pending)
        waiter = asyncio.wrap_future(job)
        try:
            if deadline is None:
                results = await waiter
            else:
                results = await asyncio.wait_for(waiter, deadline - time.monotonic())
        except TimeoutError:
            await self._keep_alive(handle, job)
            raise DeadlineExceeded("Deadline exceeded while the model was running") from None
        except asyncio.CancelledError:
            await self._keep_alive(handle, job)
            raise
        return plan.collect(results, wanted)

    @property
    def pending_requests(self) -> int:
        """Requests submitted to the executor or a batch queue and not finished."""
        return self._pending

    def set_batching_policy(self, policy: BatchingPolicy) -> None:
        """Batch with `policy` from the next request on (a config reload); queued tasks keep
        the options they were queued with."""
        self._batching = policy

    @property
    def batch_scheduler(self) -> BatchScheduler | None:
        """The shared batch scheduler, once a batched request has made it."""
        return self._scheduler

    def close(self, wait: bool = False) -> None:
        """Stop the executor and the batch scheduler.

        Calls queued on the executor are dropped; batches already queued still run (their
        callers hold handles). With `wait`, waits for running calls and batches.
        """
        with self._scheduler_lock:
            self._closed = True
            scheduler = self._scheduler
        self._executor.shutdown(wait=wait, cancel_futures=True)
        if scheduler is not None:
            scheduler.close(wait=wait)

    # --- status -----------------------------------------------------------------------------

    def model_status(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> list[VersionStatus]:
        """Every known version of `name` (highest first), or only `version` / `label`'s version.

        Raises NotFound with TF Serving's texts; InvalidInput for a version and a label together.
        """
        if label is not None:
            if version is not None:
                raise InvalidInput(f'model "{name}": give a version or a label, not both')
            resolved = self._label_resolver(name, label) if self._label_resolver else None
            if resolved is None:
                raise NotFound(f"Unrecognized servable version label: {label}")
            version = resolved
        states = self._manager.monitor.states(name)
        if not states:
            raise NotFound(f"Could not find any versions of model {name}")
        if version is None:
            return states
        found = [s for s in states if s.id.version == version]
        if not found:
            raise NotFound(f"Could not find version {version} of model {name}")
        return found

    def model_ready(self, name: str, version: int | None = None) -> bool:
        """True when `name` (or that version of it) is AVAILABLE."""
        versions = self._manager.available_versions(name)
        return bool(versions) if version is None else version in versions

    def is_ready(self, configured_names: Iterable[str]) -> bool:
        """True when every name in `configured_names` has an AVAILABLE version."""
        return all(self._manager.available_versions(name) for name in configured_names)

    def available_versions(self, name: str) -> list[int]:
        """AVAILABLE versions of `name`, highest first."""
        return self._manager.available_versions(name)

    def model_names(self) -> list[str]:
        """Every model the manager knows, loaded or not."""
        return self._manager.stream_names()

    def not_ready(self, configured_names: Iterable[str]) -> list[str]:
        """The names in `configured_names` with no AVAILABLE version."""
        return [n for n in configured_names if not self._manager.available_versions(n)]

    # --- helpers ----------------------------------------------------------------------------

    def _plan(self, signature: Signature) -> _SignaturePlan:
        plan = self._plans.get(id(signature))
        if plan is None or plan.signature is not signature:
            if len(self._plans) >= 4096:  # bound the cache across many model versions
                self._plans = {}
            plan = _SignaturePlan(signature, self.options.inline_budget_seconds)
            self._plans[id(signature)] = plan
        return plan

    def _schedule(
        self,
        handle: ServableHandle,
        signature_name: str,
        inputs: dict[str, np.ndarray],
        deadline: float | None,
        batching: BatchingOptions,
    ) -> Future[Any]:
        """Enqueue on the queue of this version, signature and options; never waits."""
        task = BatchTask(handle.servable, signature_name, inputs, deadline)
        scheduler = self._scheduler
        if scheduler is None:
            with self._scheduler_lock:
                if self._closed:
                    raise Unavailable("the server is shutting down")
                if self._scheduler is None:
                    # One pool for every model: the server-wide thread settings (TF Serving).
                    server = self._batching.server
                    self._scheduler = BatchScheduler(
                        server.num_batch_threads, server.thread_pool_name
                    )
                scheduler = self._scheduler
        # id(servable) keeps a reloaded version (same id, new servable) off the old queue; the
        # queued tasks hold the servable, so its id cannot be reused while the queue has tasks.
        key = (handle.id, signature_name, id(handle.servable), batching)
        return scheduler.schedule_nowait(key, handle.id.name, batching, task)

    def _done_pending(self, _job: Future[Any] | None) -> None:
        with self._pending_lock:
            self._pending -= 1

    async def _keep_alive(self, handle: ServableHandle, job: Future[Any]) -> None:
        """Keep `handle`'s version referenced until `job` ends, after the caller releases it."""
        if job.done():
            return
        try:
            extra = self._manager.get_handle(ServableRequest(handle.id.name, handle.id.version))
        except ServingError:
            # The version is closing: its unload waits for the caller's handle, so hold on to
            # it by waiting here for the call to finish (rare: unload during a timed-out call).
            await asyncio.wait([asyncio.wrap_future(job)])
            return
        job.add_done_callback(lambda _job: extra.release())


def _execute(
    servable: Any,
    plan: _SignaturePlan,
    inputs: dict[str, np.ndarray],
    rows: int,
    deadline: float | None,
    inline: bool,
) -> Any:
    """Drop expired work, call the servable and time it, wrap its exception once."""
    if deadline is not None and time.monotonic() >= deadline:
        raise DeadlineExceeded("Deadline exceeded while the request was queued")
    started = time.perf_counter()
    try:
        return servable.run(plan.signature.name, inputs)
    except ServingError:
        raise
    except Exception as exc:
        logger.debug("servable raised on signature %s", plan.signature.name, exc_info=True)
        raise ModelError(str(exc) or type(exc).__name__) from exc
    finally:
        plan.cost.observe(time.perf_counter() - started, rows, inline)


class _CallCost:
    """Decides, from measured wall times, whether a signature's calls run inline.

    Calls start on the executor. There, a call's time includes waiting for the GIL after the
    model released it, which under load dwarfs a cheap model, so it cannot tell how long the call
    would take inline. It can tell which models are surely too slow: when the fastest call of a
    streak on the executor is under PROBE_FACTOR times the budget, the next calls try inline,
    where the time is (mostly) the model's own. Calls go back to the executor when one inline
    call takes PROBE_FACTOR times the budget, or their running average exceeds the budget (one
    call delayed by another thread taking the GIL must not decide); the next streak is then
    twice as long, so a model that is too slow, or only sometimes slow, stalls the event loop
    ever more rarely. A request of many rows goes inline only while the cost per row measured
    inline predicts it under the budget. Updated from several threads without a lock: a lost
    update only delays a decision.
    """

    __slots__ = ("_average", "_best_call", "_budget", "_inline", "_per_row", "_seen", "_streak")

    FIRST_STREAK = 8
    LONGEST_STREAK = 1024
    #: the slowest an executor call may be for the next calls to try inline; this bounds the
    #: stall of one inline call that goes wrong (its time is at most its time on the executor)
    PROBE_FACTOR = 10.0
    #: weight of the newest inline call in the running average
    SMOOTHING = 0.1

    def __init__(self, budget: float) -> None:
        self._budget = budget
        self._inline = False
        self._average = 0.0  # of inline calls' seconds
        self._per_row = math.inf  # measured inline; until then only 1-row requests go inline
        self._streak = self.FIRST_STREAK
        self._new_streak()

    def runs_inline(self, rows: int) -> bool:
        return self._inline and (rows <= 1 or self._per_row * rows < self._budget)

    def observe(self, seconds: float, rows: int, inline: bool) -> None:
        if not inline:
            self._observe_executor_call(seconds)
            return
        self._average += self.SMOOTHING * (seconds - self._average)
        if seconds >= self.PROBE_FACTOR * self._budget or self._average >= self._budget:
            self._inline = False
            self._streak = min(2 * self._streak, self.LONGEST_STREAK)
            self._new_streak()
        else:
            self._per_row = min(self._per_row, seconds / max(rows, 1))

    def _observe_executor_call(self, seconds: float) -> None:
        self._best_call = min(self._best_call, seconds)
        self._seen += 1
        if self._seen >= self._streak:
            self._inline = self._best_call < self.PROBE_FACTOR * self._budget
            self._average = min(self._best_call, self._budget / 2)
            self._per_row = math.inf
            self._new_streak()

    def _new_streak(self) -> None:
        self._best_call = math.inf
        self._seen = 0


def _describe(array: np.ndarray) -> str:
    datatype = "BYTES" if array.dtype.kind in "OSU" else NUMPY_TO_V2.get(array.dtype)
    return f"{datatype or array.dtype} {list(array.shape)}"


class _SignaturePlan:
    """What validating a request against one signature needs, computed once per signature."""

    __slots__ = ("batchable", "batched", "cost", "inputs", "output_set", "outputs", "signature")

    def __init__(self, signature: Signature, inline_budget: float) -> None:
        self.signature = signature
        # name → (numpy dtype or None for BYTES, spec)
        self.inputs = {
            spec.name: (None if spec.datatype == "BYTES" else spec.numpy_dtype, spec)
            for spec in signature.inputs
        }
        # inputs whose dimension 0 is variable must agree on it (the batch size)
        self.batched = frozenset(
            spec.name for spec in signature.inputs if spec.shape and spec.shape[0] == -1
        )
        # the Batcher may merge requests: every input has a variable dimension 0
        self.batchable = bool(self.inputs) and len(self.batched) == len(self.inputs)
        self.outputs = tuple(spec.name for spec in signature.outputs)
        self.output_set = frozenset(self.outputs)
        self.cost = _CallCost(inline_budget)

    def validate(self, inputs: Mapping[str, np.ndarray], max_elements: int) -> int:
        """Raise InvalidInput naming the first bad input; return the batch size (1 if none)."""
        specs = self.inputs
        if len(inputs) != len(specs) or not all(name in specs for name in inputs):
            raise InvalidInput(self._mismatch_message(inputs))
        batch_name: str | None = None
        batch = 0
        for name, array in inputs.items():
            dtype, spec = specs[name]
            if not isinstance(array, np.ndarray):
                raise InvalidInput(f'input "{name}": expected an array, got {type(array).__name__}')
            dtype_ok = array.dtype.kind in "OSU" if dtype is None else array.dtype == dtype
            if not dtype_ok or not spec.shape_matches(array.shape):
                raise InvalidInput(
                    f'input "{name}": expected {spec.describe()}, got {_describe(array)}'
                )
            if array.size > max_elements:
                raise InvalidInput(
                    f'input "{name}": {array.size} elements exceed the limit of {max_elements}'
                )
            if name in self.batched:
                if batch_name is None:
                    batch_name, batch = name, array.shape[0]
                elif array.shape[0] != batch:
                    raise InvalidInput(
                        f'inputs disagree on dimension 0 (the batch size): "{batch_name}" has'
                        f' {batch}, "{name}" has {array.shape[0]}'
                    )
        return batch if batch_name is not None else 1

    def _mismatch_message(self, inputs: Mapping[str, np.ndarray]) -> str:
        # TF Serving's wording (predict_util.cc), with the names sorted.
        sent = sorted(inputs)
        wanted = sorted(self.inputs)
        extra = [n for n in sent if n not in self.inputs]
        missing = [n for n in wanted if n not in inputs]
        return (
            f"input size does not match signature: {len(sent)}!={len(wanted)}"
            f" len({{{','.join(sent)}}}) != len({{{','.join(wanted)}}})."
            f" Sent extra: {{{','.join(extra)}}}. Missing but required: {{{','.join(missing)}}}."
        )

    def check_outputs(self, names: Sequence[str]) -> tuple[str, ...]:
        for name in names:
            if name not in self.output_set:
                raise InvalidInput(
                    f'unknown output "{name}": signature "{self.signature.name}" has outputs'
                    f" {', '.join(self.outputs) or '(none)'}"
                )
        return tuple(names)

    def collect(self, results: Any, wanted: tuple[str, ...]) -> dict[str, np.ndarray]:
        if not isinstance(results, Mapping):
            raise ModelError(f"servable returned {type(results).__name__}, not a dict of outputs")
        out: dict[str, np.ndarray] = {}
        for name in wanted:
            value = results.get(name)
            if value is None:
                raise ModelError(f'servable returned no output "{name}"')
            out[name] = value if isinstance(value, np.ndarray) else np.asarray(value)
        return out
