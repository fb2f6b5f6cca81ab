"""InferenceService: the one protocol-neutral request path under the REST and gRPC codecs.

A codec turns its wire format into `dict[str, np.ndarray]`, then:

    with service.acquire(name, version, label) as handle:       # NotFound / InvalidInput
        signature = service.signature(handle, signature_name)    # FailedPrecondition
        outputs = await service.run(handle, signature, inputs, output_names, deadline)

`run` validates the inputs against the signature and hands the servable call to the model's own
execution threads (`serving.execution.Executor`: bounded per model by its `instances:` setting),
or, for a model that batches, enqueues the request on the shared BatchScheduler. Model code never
runs on the event loop.

Its neighbours hold what the path calls and returns from: the call on the execution thread
(`serving/model_call.py`), resolving a model spec and the status answers
(`serving/servable_lookup.py`, the base class), signature plans
(`serving/signature_plan.py`), the batched branch (`serving/batched_runs.py`), tracing and request
logs (`serving/observed_infer.py`), pipelines (`serving/pipeline.py`) and streaming servables
(`serving/streaming.py`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar, TypeVarTuple

import numpy as np

from pyserving.batching import BatchingPolicy, BatchScheduler
from pyserving.core.handle import ServableHandle
from pyserving.core.ids import ServableRequest
from pyserving.errors import DeadlineExceeded, ServingError, Unavailable
from pyserving.platforms.signature import Signature
from pyserving.protocols.request import InferRequest, InferResponse
from pyserving.serving import tracing
from pyserving.serving.batched_runs import BatchedRuns
from pyserving.serving.execution import DEFAULT_INSTANCES, Executor
from pyserving.serving.lane import Call
from pyserving.serving.model_call import execute
from pyserving.serving.observed_infer import Seen, infer_observed
from pyserving.serving.off_loop import run_sized
from pyserving.serving.pipeline import PipelineServable
from pyserving.serving.request_log import RequestLogs
from pyserving.serving.servable_lookup import (
    LabelResolver,
    ManagerView,
    ServableLookup,
    VersionRouter,
)
from pyserving.serving.signature_plan import SignaturePlan, SignaturePlans
from pyserving.serving.version_stats import StatsTable, VersionStats

__all__ = ["InferenceOptions", "InferenceService", "answered_version"]

logger = logging.getLogger("pyserving.inference")

T = TypeVar("T")
Args = TypeVarTuple("Args")

#: the version the current request ran on (set by `InferenceService.run`); an API edge resets it
#: to None when a request starts and reads it when counting the request in the metrics
answered_version: ContextVar[int | None] = ContextVar("pyserving_answered_version", default=None)


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


class InferenceService(ServableLookup):
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
        manager: ManagerView,
        options: InferenceOptions | None = None,
        label_resolver: LabelResolver | None = None,
        batching: BatchingPolicy | None = None,
        version_router: VersionRouter | None = None,
    ) -> None:
        self.options = options or InferenceOptions()
        self._pending_lock = threading.Lock()  # guards _pending
        self._pending = 0
        executor = Executor(
            self.options.executor_threads,
            self.options.max_queued_per_model,
            on_leave=self._leave_pending,
        )
        super().__init__(manager, executor, label_resolver, version_router)
        # Replaced whole (GIL-atomic) by set_batching_policy; read once per request.
        self._batching = batching or BatchingPolicy()
        self._batched = BatchedRuns(manager, executor, on_leave=self._leave_pending)
        self._plans = SignaturePlans()
        #: each loaded version's Triton statistics (the V2 statistics extension)
        self.statistics = StatsTable(manager)
        #: each model's sampled request log (ServerCore configures it from the models' `logging`)
        self.request_logs = RequestLogs()

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
        stats = self.statistics.get(handle)
        started = time.perf_counter_ns()
        ok = False
        try:
            outputs = await self._run(handle, signature, inputs, output_names, deadline, stats)
            ok = True
            return outputs
        finally:
            stats.answered(ok, time.perf_counter_ns() - started)

    async def _run(
        self,
        handle: ServableHandle,
        signature: Signature,
        inputs: dict[str, np.ndarray],
        output_names: Sequence[str] | None,
        deadline: float | None,
        stats: VersionStats,
    ) -> dict[str, np.ndarray]:
        plan = self._plans.get(signature)
        if handle.servable.run_kind != "function":  # a python servable's async def or generator
            # imported here: the streaming module builds on this one
            from pyserving.serving.streaming import run_unary

            return await run_unary(self, handle, plan, inputs, output_names, deadline)
        rows = plan.validate(inputs, self.options.max_tensor_elements)
        wanted = plan.outputs if output_names is None else plan.check_outputs(output_names)
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceeded("Deadline exceeded before the request could run")
        # A signature with an input that is not batched on dimension 0 runs unbatched.
        policy = self._batching
        batching = (
            policy.options_for(handle.id.name, getattr(handle.servable, "version_batching", None))
            if plan.batchable
            else None
        )
        self._enter_pending()
        if batching is not None:
            outputs = await self._batched.run(
                handle, signature.name, inputs, deadline, batching, policy.server, stats
            )
            return plan.collect(outputs, wanted)
        span = tracing.current.get() if tracing.enabled else None
        timing = None if span is None else tracing.CallTiming()
        try:
            call = self.executor.submit(
                handle.id.name,
                execute,
                handle.servable,
                plan,
                inputs,
                wanted,
                rows if plan.batchable else 1,  # batch items: rows of a batchable signature
                deadline,
                stats,
                time.perf_counter_ns(),
                timing,
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

    async def infer(self, request: InferRequest) -> InferResponse:
        """Resolve, decode (checked against the signature before allocating), run: the one
        entry point of every codec; a request larger than `off_loop.OFF_LOOP_BYTES` decodes on
        a codec thread. Raises what `acquire`, `signature`, the request's decoder and `run`
        raise. Traced and request-logged only while tracing or the model's log is on."""
        if tracing.enabled or request.model in self.request_logs.models:
            return await infer_observed(self._infer, request, self.request_logs, answered_version)
        return await self._infer(request, None)

    async def _infer(self, request: InferRequest, seen: Seen | None) -> InferResponse:
        with await self.acquire_loaded(
            request.model, request.version, request.label, request.deadline
        ) as handle:
            # counted against this version even when decoding refuses the inputs
            answered_version.set(handle.id.version)
            stats = self.statistics.get(handle)
            started = time.perf_counter_ns()
            ok = False
            try:
                response = await self._answer(handle, request, seen, stats)
                ok = True
            finally:
                stats.answered(ok, time.perf_counter_ns() - started)
                answered_version.set(handle.id.version)  # a pipeline's steps set their own
        return response

    async def _answer(
        self, handle: ServableHandle, request: InferRequest, seen: Seen | None, stats: VersionStats
    ) -> InferResponse:
        """Decode, check and run `request` on `handle` (a pipeline answers it itself)."""
        signature = self.signature(handle, request.signature_name)
        inputs = request.inputs
        if not isinstance(inputs, dict):
            inputs = await run_sized(request.size, inputs, signature, self.options)
        if seen is not None:
            seen.inputs = inputs
        if isinstance(handle.servable, PipelineServable):
            return await handle.servable.answer(self, handle, signature, inputs, request)
        outputs = await self._run(
            handle, signature, inputs, request.outputs, request.deadline, stats
        )
        return InferResponse(request.model, handle.id.version, signature.name, outputs, request.id)

    def version_statistics(self, name: str, version: int) -> dict[str, Any] | None:
        """`name` at `version`'s Triton statistics (less name and version), None when it has
        had no request since it loaded."""
        stats = self.statistics.find(name, version)
        return None if stats is None else stats.snapshot()

    # --- settings and shutdown --------------------------------------------------------------

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
        return self._batched.scheduler

    def close(self, wait: bool = False, timeout_s: float | None = None) -> bool:
        """Stop the execution threads and the batch scheduler.

        Calls queued for a model's threads fail with Unavailable; batches already queued still
        run (their callers hold handles). With `wait`, waits (up to `timeout_s`) for running
        calls and batches. True when every thread exited.
        """
        self._batched.refuse_new()
        stopped = self.executor.close(timeout_s if wait else 0.0)
        self.request_logs.close()
        self._batched.close(wait=wait, timeout_s=timeout_s)
        return stopped if wait else True

    def set_instances(self, per_model: Mapping[str, int]) -> None:
        """Each model's execution thread count from now on (its `instances:`; a reload)."""
        self.executor.set_instances(per_model)

    # --- for the streaming request path (serving/streaming.py) -----------------------------

    def plan(self, signature: Signature) -> SignaturePlan:
        """How requests of `signature` are validated and their outputs collected (cached)."""
        return self._plans.get(signature)

    def submit(self, model: str, fn: Callable[[*Args], T], *args: *Args) -> Call[T]:
        """`fn(*args)` queued on `model`'s execution threads, counted as a pending request
        until it leaves them. Raises Unavailable (too many pending, queue full, closing)."""
        self._enter_pending()
        try:
            return self.executor.submit(model, fn, *args)
        except BaseException:
            self._leave_pending()
            raise

    # --- helpers ----------------------------------------------------------------------------

    def _enter_pending(self) -> None:
        """Count one more pending request; raises Unavailable when there are too many."""
        with self._pending_lock:
            if self._pending >= self.options.max_pending_requests:
                raise Unavailable(f"too many requests pending ({self._pending}); try again later")
            self._pending += 1

    def _leave_pending(self) -> None:
        with self._pending_lock:
            self._pending -= 1

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


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
