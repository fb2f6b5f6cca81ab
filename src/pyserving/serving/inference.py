"""InferenceService: the one protocol-neutral request path under the REST and gRPC codecs.

A codec turns its wire format into `dict[str, np.ndarray]`, then:

    with service.acquire(name, version, label) as handle:       # NotFound / InvalidInput
        signature = service.signature(handle, signature_name)    # FailedPrecondition
        outputs = await service.run(handle, signature, inputs, output_names, deadline)

`run` validates the inputs against the signature and hands the servable call to the model's own
execution threads (`serving.execution.Executor`: bounded per model by its `instances:` setting),
or, for a model that batches, enqueues the request on the shared BatchScheduler. Model code never
runs on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol, TypeVar, TypeVarTuple

import numpy as np

from pyserving.batching import BatchingOptions, BatchingPolicy, BatchScheduler, BatchTask
from pyserving.core.handle import ServableHandle
from pyserving.core.ids import ServableRequest
from pyserving.core.monitor import VersionStatus
from pyserving.core.resources import ResourceTracker
from pyserving.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidInput,
    ModelError,
    NotFound,
    ServingError,
    Unavailable,
)
from pyserving.platforms.servable import Servable, current_deadline
from pyserving.platforms.signature import DEFAULT_SIGNATURE, NUMPY_TO_V2, Signature
from pyserving.protocols.request import InferRequest, InferResponse
from pyserving.protocols.tensors import mismatch_message
from pyserving.serving import tracing
from pyserving.serving.execution import DEFAULT_INSTANCES, Call, Executor, run_sized
from pyserving.serving.pipeline import STEP_VERSIONS_PARAMETER, PipelineServable
from pyserving.serving.request_log import LogEntry, RequestLogs

__all__ = [
    "InferenceOptions",
    "InferenceService",
    "LabelResolver",
    "VersionRouter",
    "answered_version",
]

logger = logging.getLogger("pyserving.inference")

T = TypeVar("T")
Args = TypeVarTuple("Args")

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

    @property
    def monitor(self) -> _Monitor: ...

    def get_handle(self, request: ServableRequest) -> ServableHandle: ...

    def available_versions(self, name: str) -> list[int]: ...

    def stream_names(self) -> list[str]: ...

    @property
    def resources(self) -> ResourceTracker: ...


class OnDemand(Protocol):
    """What InferenceService needs of `pyserving.serving.on_demand.OnDemandModels`."""

    def is_on_demand(self, name: str) -> bool: ...

    def is_loaded(self, name: str) -> bool: ...

    async def ensure(self, name: str, deadline: float | None) -> bool: ...

    def unpin(self, name: str) -> None: ...


@dataclass(frozen=True, slots=True)
class InferenceOptions:
    """Limits and threads of the request path."""

    #: execution threads of each model whose config sets no `instances` (its concurrent calls)
    executor_threads: int = DEFAULT_INSTANCES
    #: requests queued or running at once; more are refused at once with Unavailable (503)
    max_pending_requests: int = 1024
    #: calls one model may have queued for its threads; more are refused with Unavailable, so
    #: a hung model cannot use up `max_pending_requests` for the others
    max_queued_per_model: int = 512
    #: the most elements one input tensor may have (codecs check it before allocating)
    max_tensor_elements: int = 1 << 26
    #: the most bytes one input tensor may take once decoded (`--max-request-bytes`): a wire
    #: tensor declaring more is refused before it is allocated (TF's one-value fill included)
    max_tensor_bytes: int = 64 * 1024 * 1024


class InferenceService:
    """Resolves a model spec to a handle, validates inputs, runs the servable on its model's
    execution threads (never on the event loop).

    Thread-safety: `acquire`, `signature` and the status helpers may be called from any thread;
    `run` is a coroutine and may be awaited concurrently on one or more event loops.
    Ownership: the caller releases the handle (use `with`). When `run` gives up on a servable call
    that already started (deadline, cancellation), it keeps that version referenced until the call
    returns, so the version is never unloaded under a running request.
    Blocking: nothing here waits on another thread except `close(wait=True)`.
    Cancellation: a cancelled or expired request whose call has not started (in its model's queue
    or a batch queue) is dropped; one that has started runs to completion on its thread (counted
    as stuck meanwhile: `Executor.stuck_reason`) and its result is discarded.
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
        self._pending_lock = threading.Lock()  # guards _pending
        self._pending = 0
        self.executor = Executor(
            self.options.executor_threads,
            self.options.max_queued_per_model,
            on_leave=self._leave_pending,
        )
        # id(signature) → its precomputed plan; the plan holds the signature, so the id is not
        # reused while the entry exists. Written only with whole-entry assignment (GIL-atomic).
        self._plans: dict[int, _SignaturePlan] = {}
        #: each model's sampled request log (ServerCore configures it from the models' `logging`)
        self.request_logs = RequestLogs()
        #: loads `load: on_demand` models on their first request (set once by ServerCore)
        self.on_demand: OnDemand | None = None

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

    async def acquire_loaded(
        self,
        name: str,
        version: int | None = None,
        label: str | None = None,
        deadline: float | None = None,
    ) -> ServableHandle:
        """`acquire`, after loading an on-demand model the request names (waiting on the loop,
        within `deadline`). Raises as `acquire` and `OnDemandModels.ensure`."""
        on_demand = self.on_demand
        if on_demand is None or not on_demand.is_on_demand(name):
            return self.acquire(name, version, label)
        for _ in range(_ON_DEMAND_TRIES - 1):
            pinned = await on_demand.ensure(name, deadline)
            try:
                return self.acquire(name, version, label)
            except NotFound:
                # evicted between its ensure and this acquire (memory was short): load it again
                continue
            finally:
                if pinned:
                    on_demand.unpin(name)
        pinned = await on_demand.ensure(name, deadline)
        try:
            return self.acquire(name, version, label)
        finally:
            if pinned:
                on_demand.unpin(name)

    def signature(self, handle: ServableHandle, name: str | None = None) -> Signature:
        """The named signature; None or "" means "serving_default", or the only one there is.

        Raises FailedPrecondition with TF Serving's text (its code and words) when there is no
        such signature.
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
            raise FailedPrecondition(f'Serving signature key "{name}" not found.')
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
        """Validate `inputs`, run the servable (its model's execution threads, or a batch
        queue), return the requested outputs.

        `deadline` is a `time.monotonic()` instant covering queueing and execution. Outputs come
        in `output_names` order (all of the signature's outputs, in its order, when None).
        Raises InvalidInput (inputs or output names), DeadlineExceeded, Unavailable (too many
        requests pending), ModelError (the servable raised; a ServingError it raises passes
        through unchanged).
        """
        answered_version.set(handle.id.version)  # for the API edge's request metrics
        plan = self._plan(signature)
        if handle.servable.run_kind != "function":  # a python servable's async def or generator
            # imported here: the streaming module builds on this one
            from pyserving.serving.streaming import run_unary

            return await run_unary(self, handle, plan, inputs, output_names, deadline)
        plan.validate(inputs, self.options.max_tensor_elements)
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
        with self._pending_lock:
            if self._pending >= self.options.max_pending_requests:
                raise Unavailable(f"too many requests pending ({self._pending}); try again later")
            self._pending += 1
        if batching is not None:
            return plan.collect(
                await self._run_batched(handle, signature, inputs, deadline, batching), wanted
            )
        span = tracing.current.get() if tracing.enabled else None
        timing: tracing.CallTiming | None = None
        try:
            if span is None:
                call = self.executor.submit(
                    handle.id.name, _execute, handle.servable, plan, inputs, wanted, deadline
                )
            else:
                timing = tracing.CallTiming()
                call = self.executor.submit(
                    handle.id.name,
                    _execute_timed,
                    timing,
                    handle.servable,
                    plan,
                    inputs,
                    wanted,
                    deadline,
                )
        except BaseException:  # refused: the model's queue is full, or closing
            self._leave_pending()
            raise
        try:
            return await call.result(deadline)
        except BaseException:
            if call.abandon():  # still running on its thread
                stuck = self.executor.stuck_reason(handle.id.name)
                if stuck is not None:  # its readiness says so too (model_ready)
                    logger.warning("model %s is not ready: %s", handle.id.name, stuck)
                await self._keep_alive(handle, call)
            raise
        finally:
            if span is not None and timing is not None:
                span.add_call(timing)

    async def _run_batched(
        self,
        handle: ServableHandle,
        signature: Signature,
        inputs: dict[str, np.ndarray],
        deadline: float | None,
        batching: BatchingOptions,
    ) -> dict[str, np.ndarray]:
        span = tracing.current.get() if tracing.enabled else None
        queued_ns = time.time_ns() if span is not None else 0
        try:
            task = self._schedule(handle, signature.name, inputs, deadline, batching, span)
        except BaseException:  # refused by the batch queue: full, task too large, closing
            self._leave_pending()
            raise
        job = task.future
        job.add_done_callback(self._done_pending)
        waiter = asyncio.wrap_future(job)
        try:
            if deadline is None:
                return await waiter
            return await asyncio.wait_for(waiter, deadline - time.monotonic())
        except TimeoutError:
            await self._keep_alive_batch(handle, job)
            raise DeadlineExceeded("Deadline exceeded while the model was running") from None
        except asyncio.CancelledError:
            await self._keep_alive_batch(handle, job)
            raise
        finally:
            if span is not None:
                span.add_batch(queued_ns, task.batch)

    @property
    def pending_requests(self) -> int:
        """Requests queued or running (abandoned calls still running included)."""
        return self._pending

    def set_batching_policy(self, policy: BatchingPolicy) -> None:
        """Batch with `policy` from the next request on (a config reload); queued tasks keep
        the options they were queued with."""
        self._batching = policy

    @property
    def batch_scheduler(self) -> BatchScheduler | None:
        """The shared batch scheduler, once a batched request has made it."""
        return self._scheduler

    def close(self, wait: bool = False, timeout_s: float | None = None) -> bool:
        """Stop the execution threads and the batch scheduler.

        Calls queued for a model's threads fail with Unavailable; batches already queued still
        run (their callers hold handles). With `wait`, waits (up to `timeout_s`) for running
        calls and batches. True when every thread exited.
        """
        with self._scheduler_lock:
            self._closed = True
            scheduler = self._scheduler
        stopped = self.executor.close(timeout_s if wait else 0.0)
        self.request_logs.close()
        if scheduler is not None:
            scheduler.close(wait=wait, timeout_s=timeout_s)
        return stopped if wait else True

    def set_instances(self, per_model: Mapping[str, int]) -> None:
        """Each model's execution thread count from now on (its `instances:`; a reload)."""
        self.executor.set_instances(per_model)

    async def infer(self, request: InferRequest) -> InferResponse:
        """Resolve, decode (checked against the signature before allocating), run: the one
        entry point of every codec; a request larger than `execution.OFF_LOOP_BYTES` decodes on
        a codec thread. Raises what `acquire`, `signature`, the request's decoder and `run`
        raise. Traced and request-logged only while tracing or the model's log is on."""
        if tracing.enabled or request.model in self.request_logs.models:
            return await self._infer_observed(request)
        return await self._infer(request, None)

    async def _infer_observed(self, request: InferRequest) -> InferResponse:
        """`_infer` in its trace span (`tracing.current`), then offered to the model's log."""
        started = time.perf_counter()
        span = tracing.start_request(request.model) if tracing.enabled else None
        token = tracing.current.set(span)
        seen = _Seen()
        code = "OK"
        try:
            response = await self._infer(request, seen)
            seen.outputs = response.outputs
            return response
        except ServingError as exc:
            code = exc.code.name
            raise
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except BaseException:
            code = "INTERNAL"
            raise
        finally:
            tracing.current.reset(token)
            version = answered_version.get()
            if span is not None:
                span.finish(version, code)
            log = self.request_logs.models.get(request.model)
            if log is not None and log.sample():
                log.offer(
                    LogEntry(
                        time.time(),
                        request.model,
                        version,
                        tracing.protocol(),
                        seen.inputs,
                        seen.outputs,
                        code,
                        time.perf_counter() - started,
                    )
                )

    async def _infer(self, request: InferRequest, seen: _Seen | None) -> InferResponse:
        with await self.acquire_loaded(
            request.model, request.version, request.label, request.deadline
        ) as handle:
            # counted against this version even when decoding refuses the inputs
            answered_version.set(handle.id.version)
            signature = self.signature(handle, request.signature_name)
            inputs = request.inputs
            if not isinstance(inputs, dict):
                inputs = await run_sized(request.size, inputs, signature, self.options)
            if seen is not None:
                seen.inputs = inputs
            if isinstance(handle.servable, PipelineServable):
                return await self._run_pipeline(handle.servable, handle, signature, inputs, request)
            outputs = await self.run(handle, signature, inputs, request.outputs, request.deadline)
            version = handle.id.version
        return InferResponse(request.model, version, signature.name, outputs, request.id)

    async def _run_pipeline(
        self,
        pipeline: PipelineServable,
        handle: ServableHandle,
        signature: Signature,
        inputs: dict[str, np.ndarray],
        request: InferRequest,
    ) -> InferResponse:
        """A pipeline's request: checked against the pipeline's signature, then its steps run
        (each through `run`); the answer names the version each step ran on."""
        plan = self._plan(signature)
        plan.validate(inputs, self.options.max_tensor_elements)
        wanted = plan.outputs if request.outputs is None else plan.check_outputs(request.outputs)
        outputs, versions = await pipeline.run_steps(self, inputs, wanted, request.deadline)
        answered_version.set(handle.id.version)  # the steps' runs set their own
        return InferResponse(
            request.model,
            handle.id.version,
            signature.name,
            outputs,
            request.id,
            {STEP_VERSIONS_PARAMETER: json.dumps(versions, separators=(",", ":"))},
        )

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
        if not states and version is None and self._is_on_demand(name):
            return []  # known, never loaded yet: TF's states have no "unloaded" to report
        if not states:
            raise NotFound(f"Could not find any versions of model {name}")
        if version is None:
            return states
        found = [s for s in states if s.id.version == version]
        if not found:
            raise NotFound(f"Could not find version {version} of model {name}")
        return found

    def memory(self) -> tuple[int, int | None]:
        """Bytes the loaded versions hold against the budget, and the budget (None: unlimited:
        `--total_model_memory_limit_bytes`)."""
        resources = self._manager.resources
        return resources.used_bytes, resources.total_bytes

    def _is_on_demand(self, name: str) -> bool:
        return self.on_demand is not None and self.on_demand.is_on_demand(name)

    def model_ready(self, name: str, version: int | None = None) -> bool:
        """True when `name` (or that version of it) is AVAILABLE and its execution threads are
        not all stuck in calls past their deadline (`model_not_ready_reason`)."""
        return self.model_not_ready_reason(name, version) is None

    def model_not_ready_reason(self, name: str, version: int | None = None) -> str | None:
        """Why `name` (or that version of it) is not ready: no AVAILABLE version, or every one of
        its execution threads stuck in a call past its deadline; None when it is ready."""
        versions = self._manager.available_versions(name)
        if not (versions if version is None else version in versions):
            return (
                "no AVAILABLE version" if version is None else f"version {version} is not AVAILABLE"
            )
        return self.executor.stuck_reason(name)

    def is_ready(self, configured_names: Iterable[str]) -> bool:
        """True when every name in `configured_names` has an AVAILABLE version (the server's
        readiness: `not_ready_reasons`)."""
        return not self.not_ready_reasons(configured_names)

    def available_versions(self, name: str) -> list[int]:
        """AVAILABLE versions of `name`, highest first."""
        return self._manager.available_versions(name)

    def model_names(self) -> list[str]:
        """Every model the manager knows, loaded or not."""
        return self._manager.stream_names()

    def not_ready(self, configured_names: Iterable[str]) -> list[str]:
        """The names in `configured_names` that have no AVAILABLE version."""
        return list(self.not_ready_reasons(configured_names))

    def not_ready_reasons(self, configured_names: Iterable[str]) -> dict[str, str]:
        """Model name → why the server is not ready for it, for the names in `configured_names`
        that have no AVAILABLE version.

        A model whose threads are all stuck is not ready itself (`model_ready`) but leaves the
        server ready: one client able to hang one model must not take every replica out of the
        load balancer, where the other models still answer.
        """
        reasons: dict[str, str] = {}
        for name in configured_names:
            if not self._manager.available_versions(name):
                reasons[name] = "no AVAILABLE version"
        return reasons

    # --- for the streaming request path (serving/streaming.py) -----------------------------

    def plan(self, signature: Signature) -> _SignaturePlan:
        """How requests of `signature` are validated and their outputs collected (cached)."""
        return self._plan(signature)

    def submit(self, model: str, fn: Callable[[*Args], T], *args: *Args) -> Call[T]:
        """`fn(*args)` queued on `model`'s execution threads, counted as a pending request
        until it leaves them. Raises Unavailable (too many pending, queue full, closing)."""
        with self._pending_lock:
            if self._pending >= self.options.max_pending_requests:
                raise Unavailable(f"too many requests pending ({self._pending}); try again later")
            self._pending += 1
        try:
            return self.executor.submit(model, fn, *args)
        except BaseException:
            self._leave_pending()
            raise

    # --- helpers ----------------------------------------------------------------------------

    def _plan(self, signature: Signature) -> _SignaturePlan:
        plan = self._plans.get(id(signature))
        if plan is None or plan.signature is not signature:
            if len(self._plans) >= 4096:  # bound the cache across many model versions
                self._plans = {}
            plan = _SignaturePlan(signature)
            self._plans[id(signature)] = plan
        return plan

    def _schedule(
        self,
        handle: ServableHandle,
        signature_name: str,
        inputs: dict[str, np.ndarray],
        deadline: float | None,
        batching: BatchingOptions,
        span: tracing.RequestSpan | None = None,
    ) -> BatchTask:
        """Enqueue on the queue of this version, signature and options; never waits."""
        task = BatchTask(handle.servable, signature_name, inputs, deadline)
        task.trace = span
        scheduler = self._scheduler
        if scheduler is None:
            with self._scheduler_lock:
                if self._closed:
                    raise Unavailable("the server is shutting down")
                if self._scheduler is None:
                    # One pool for every model: the server-wide thread settings (TF Serving).
                    server = self._batching.server
                    # A model with its own `instances:` runs at most that many batches at
                    # once, so a slow or hung one leaves the other threads to the other models.
                    threads = server.num_batch_threads
                    self._scheduler = BatchScheduler(
                        threads,
                        server.thread_pool_name,
                        concurrency=lambda model: self.executor.configured(model) or threads,
                    )
                scheduler = self._scheduler
        # id(servable) keeps a reloaded version (same id, new servable) off the old queue; the
        # queued tasks hold the servable, so its id cannot be reused while the queue has tasks.
        key = (handle.id, signature_name, id(handle.servable), batching)
        scheduler.schedule_nowait(key, handle.id.name, batching, task)
        return task

    def _leave_pending(self) -> None:
        with self._pending_lock:
            self._pending -= 1

    def _done_pending(self, _job: Future[dict[str, np.ndarray]]) -> None:
        self._leave_pending()

    async def _keep_alive(self, handle: ServableHandle, call: Call[dict[str, np.ndarray]]) -> None:
        """Keep `handle`'s version referenced until `call` returns, after the caller releases
        it (the call is stuck on its thread; its request has given up)."""
        try:
            extra = self._manager.get_handle(ServableRequest(handle.id.name, handle.id.version))
        except ServingError:
            # The version is closing: its unload waits for the caller's handle, so hold on to
            # it by waiting here for the call to return (rare: unload during a timed-out call).
            loop = asyncio.get_running_loop()
            returned = loop.create_future()
            if call.when_returned(lambda: loop.call_soon_threadsafe(_resolve, returned)):
                await asyncio.shield(returned)
            return
        if not call.when_returned(extra.release):
            extra.release()

    async def _keep_alive_batch(
        self, handle: ServableHandle, job: Future[dict[str, np.ndarray]]
    ) -> None:
        """As `_keep_alive`, for a task in a batch queue (its future ends when its batch ran)."""
        if job.done():
            return
        try:
            extra = self._manager.get_handle(ServableRequest(handle.id.name, handle.id.version))
        except ServingError:
            await asyncio.wait([asyncio.wrap_future(job)])
            return
        job.add_done_callback(lambda _job: extra.release())


#: how often a request loads an on-demand model that was evicted before it could take a handle
_ON_DEMAND_TRIES = 3


class _Seen:
    """What a traced or logged request decoded and answered (empty until known)."""

    __slots__ = ("inputs", "outputs")

    def __init__(self) -> None:
        self.inputs: Mapping[str, np.ndarray] = {}
        self.outputs: Mapping[str, np.ndarray] = {}


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _execute(
    servable: Servable,
    plan: _SignaturePlan,
    inputs: dict[str, np.ndarray],
    wanted: tuple[str, ...],
    deadline: float | None,
) -> dict[str, np.ndarray]:
    """On an execution thread: drop expired work, call the servable, wrap its exception once,
    collect the wanted outputs (converting them, which grows with the output, happens here)."""
    if deadline is not None and time.monotonic() >= deadline:
        raise DeadlineExceeded("Deadline exceeded while the request was queued")
    name = plan.signature.name
    token = current_deadline.set(deadline)
    try:
        results = servable.run(name, inputs)
    except ServingError:
        raise
    except Exception as exc:
        logger.debug("servable raised on signature %s", name, exc_info=True)
        raise ModelError(str(exc) or type(exc).__name__) from exc
    finally:
        current_deadline.reset(token)
    return plan.collect(results, wanted)


def _execute_timed(
    timing: tracing.CallTiming,
    servable: Servable,
    plan: _SignaturePlan,
    inputs: dict[str, np.ndarray],
    wanted: tuple[str, ...],
    deadline: float | None,
) -> dict[str, np.ndarray]:
    """`_execute`, recording when it started and returned (a traced request)."""
    timing.started_ns = time.time_ns()
    try:
        return _execute(servable, plan, inputs, wanted, deadline)
    finally:
        timing.ended_ns = time.time_ns()


def _describe(array: np.ndarray) -> str:
    datatype = "BYTES" if array.dtype.kind in "OSU" else NUMPY_TO_V2.get(array.dtype)
    return f"{datatype or array.dtype} {list(array.shape)}"


class _SignaturePlan:
    """What validating a request against one signature needs, computed once per signature."""

    __slots__ = ("batchable", "batched", "inputs", "output_set", "outputs", "signature")

    def __init__(self, signature: Signature) -> None:
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

    def validate(self, inputs: Mapping[str, np.ndarray], max_elements: int) -> int:
        """Raise InvalidInput naming the first bad input; return the batch size (1 if none)."""
        specs = self.inputs
        if len(inputs) != len(specs) or not all(name in specs for name in inputs):
            raise InvalidInput(mismatch_message(inputs, specs))
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

    def check_outputs(self, names: Sequence[str]) -> tuple[str, ...]:
        for name in names:
            if name not in self.output_set:
                raise InvalidInput(
                    f'unknown output "{name}": signature "{self.signature.name}" has outputs'
                    f" {', '.join(self.outputs) or '(none)'}"
                )
        return tuple(names)

    def collect(self, results: object, wanted: tuple[str, ...]) -> dict[str, np.ndarray]:
        if not isinstance(results, Mapping):
            raise ModelError(f"servable returned {type(results).__name__}, not a dict of outputs")
        out: dict[str, np.ndarray] = {}
        for name in wanted:
            value = results.get(name)
            if value is None:
                raise ModelError(f'servable returned no output "{name}"')
            out[name] = value if isinstance(value, np.ndarray) else np.asarray(value)
        return out
