"""Streaming: a python servable whose `run` yields parts answers a stream of responses.

`open_stream(service, request)` resolves, decodes and validates a request as
`InferenceService.infer` does and answers a `PartStream` (or None for a servable that does not
stream); a transport edge (REST `generate_stream` / `generate`, gRPC `ModelStreamInfer`) pulls
its parts one at a time and writes each before asking for the next one.

- A generator (`def run` with `yield`) runs on its model's execution threads, one `next()` per
  lane call (`InferenceService.submit`): it shares the model's `instances:` bound, queue, pending
  count and stuck-call accounting with every other call, and holds no thread while a part is
  written. Back-pressure: one part at most is computed ahead of the one being written (the next
  `next()` is queued when a part is handed out), so a slow reader pauses the generator instead
  of letting parts pile up.
- An async generator (`async def run` with `yield`) runs on the event loop; it must not block.
- The request's deadline covers the whole stream. Closing a stream (its end, an error, the
  deadline, a client that went away) closes the generator on the thread it runs on, after a
  running `next()` returns, so its `finally` runs; the version's handle is released after that.
- Statistics (the V2 extension): a stream counts once in its version's `success` (its generator
  ended) or `fail` (it raised, its deadline passed, the client left or a request check refused
  it after its version resolved), timed from the version being resolved to that end.
- On the one-answer APIs (TF predict, V2 infer) a streaming servable is refused with
  FailedPrecondition naming the streaming endpoints; an `async def run` returning one dict is
  awaited on the loop (`run_unary`).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from pyserving.core.handle import ServableHandle
from pyserving.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    ModelError,
    ServingError,
    Unavailable,
)
from pyserving.platforms.servable import STREAMING_KINDS, model_error
from pyserving.platforms.signature import Signature
from pyserving.protocols.request import InferRequest
from pyserving.serving.inference import answered_version
from pyserving.serving.lane import Call
from pyserving.serving.off_loop import run_sized
from pyserving.serving.version_stats import VersionStats

if TYPE_CHECKING:
    from pyserving.serving.inference import InferenceService

__all__ = ["PartStream", "open_stream", "run_unary", "streams_only_message"]

logger = logging.getLogger("pyserving.streaming")

Outputs = dict[str, np.ndarray]


class _Plan(Protocol):
    """What this module needs of InferenceService's per-signature plan."""

    signature: Signature
    outputs: tuple[str, ...]

    def validate(self, inputs: Mapping[str, np.ndarray], max_elements: int) -> int: ...

    def check_outputs(self, names: Sequence[str]) -> tuple[str, ...]: ...

    def collect(self, results: object, wanted: tuple[str, ...]) -> Outputs: ...


class _End:
    """The value a generator step answers once the generator is exhausted."""


_END = _End()


def streams_only_message(model: str) -> str:
    """Why a one-answer API refuses a streaming model, and where to ask instead."""
    return (
        f'model "{model}" streams its results (its run is a generator): ask for them with'
        f" POST /v2/models/{model}/generate_stream (server-sent events), /generate (the last"
        " part only) or gRPC ModelStreamInfer"
    )


class PartStream(abc.ABC):
    """One request's stream of parts, each a dict of the requested outputs, in order.

    Thread-safety: one task pulls (`next_part`) and closes it, on the loop that opened it;
    `close_soon` may be called from a callback on that loop.
    Ownership: holds the version's handle until closed; `aclose` (idempotent) must be called
    when the caller stops early (an exhausted or failed stream closes itself).
    Cancellation: closing stops the generator: it is closed on its thread (its `finally` runs)
    once a running step returns; a queued step is dropped.
    """

    def __init__(
        self,
        handle: ServableHandle,
        signature: Signature,
        request_id: str | None,
        stats: VersionStats,
        started_ns: int,
    ) -> None:
        self.model = handle.id.name
        self.version = handle.id.version
        self.signature_name = signature.name
        self.id = request_id
        self._stats: VersionStats | None = stats  # None once this stream counted
        self._started_ns = started_ns  # perf_counter_ns when its version resolved

    def _counted(self, ok: bool) -> None:
        """Count the stream in its version's statistics, once: its first end decides."""
        stats, self._stats = self._stats, None
        if stats is not None:
            stats.answered(ok, time.perf_counter_ns() - self._started_ns)

    @abc.abstractmethod
    async def next_part(self) -> Outputs | None:
        """The next part, or None after the last one. Raises DeadlineExceeded, ModelError (the
        generator raised or yielded something other than a dict of outputs), Unavailable; the
        stream is closed then."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop the generator (its `finally` runs on its thread) and release the version."""

    @abc.abstractmethod
    def close_soon(self) -> None:
        """`aclose` from a callback: what the stream's own task is not doing already."""


async def open_stream(service: InferenceService, request: InferRequest) -> PartStream | None:
    """The parts of `request` on a streaming servable; None (nothing decoded) for one whose
    `run` returns one answer, which the caller sends through `service.infer`.

    Raises what `InferenceService.infer` raises before running the model.
    """
    handle = await service.acquire_loaded(
        request.model, request.version, request.label, request.deadline
    )
    kind = handle.servable.run_kind
    if kind not in STREAMING_KINDS:
        handle.release()
        return None
    started = time.perf_counter_ns()
    stats = service.statistics.get(handle)
    try:
        answered_version.set(handle.id.version)
        signature = service.signature(handle, request.signature_name)
        inputs = request.inputs
        if not isinstance(inputs, dict):
            inputs = await run_sized(request.size, inputs, signature, service.options)
        plan = service.plan(signature)
        plan.validate(inputs, service.options.max_tensor_elements)
        wanted = plan.outputs if request.outputs is None else plan.check_outputs(request.outputs)
        if request.deadline is not None and time.monotonic() >= request.deadline:
            raise DeadlineExceeded("Deadline exceeded before the request could run")
        # Calling a generator function runs none of its code: safe on the loop.
        parts = _start(handle, signature.name, inputs)
    except BaseException:
        stats.answered(False, time.perf_counter_ns() - started)
        handle.release()
        raise
    if kind == "generator":
        return _ThreadParts(
            service, handle, plan, wanted, parts, request.deadline, request.id, stats, started
        )
    return _LoopParts(handle, plan, wanted, parts, request.deadline, request.id, stats, started)


async def run_unary(
    service: InferenceService,
    handle: ServableHandle,
    plan: _Plan,
    inputs: Outputs,
    output_names: Sequence[str] | None,
    deadline: float | None,
) -> Outputs:
    """`InferenceService.run` for a python servable whose `run` is not a plain function: an
    `async def run` is awaited on the loop (within `deadline`); a streaming one is refused with
    FailedPrecondition naming the streaming endpoints."""
    if handle.servable.run_kind in STREAMING_KINDS:
        raise FailedPrecondition(streams_only_message(handle.id.name))
    plan.validate(inputs, service.options.max_tensor_elements)
    wanted = plan.outputs if output_names is None else plan.check_outputs(output_names)
    coroutine = _start(handle, plan.signature.name, inputs)
    try:
        async with asyncio.timeout(_remaining(deadline)) as timer:
            results = await coroutine
    except TimeoutError:
        if timer.expired():
            raise DeadlineExceeded("Deadline exceeded while the model was running") from None
        raise ModelError("TimeoutError") from None
    except (ServingError, asyncio.CancelledError):
        raise
    except Exception as exc:
        raise model_error(exc) from exc
    return plan.collect(results, wanted)


class _ThreadParts(PartStream):
    """A generator's parts, each computed by one call on the model's execution threads."""

    def __init__(
        self,
        service: InferenceService,
        handle: ServableHandle,
        plan: _Plan,
        wanted: tuple[str, ...],
        generator: Iterator[Any],
        deadline: float | None,
        request_id: str | None,
        stats: VersionStats,
        started_ns: int,
    ) -> None:
        super().__init__(handle, plan.signature, request_id, stats, started_ns)
        self._service = service
        self._handle = handle
        self._plan = plan
        self._wanted = wanted
        self._generator: Iterator[Any] | None = generator
        self._deadline = deadline
        self._ahead: Call[Outputs | _End] | None = None  # the next part, being computed
        self._closed = False

    async def next_part(self) -> Outputs | None:
        if self._closed:
            return None
        call, self._ahead = self._ahead, None
        try:
            if call is None:
                call = self._submit()
            part = await call.result(self._deadline)
        except BaseException:
            self._close(call)
            raise
        if isinstance(part, _End):
            self._counted(True)
            self._close(None)
            return None
        # The next part is computed while the caller writes this one: the one part the stream
        # buffers. A full queue now is not an error yet: the next next_part asks again.
        with contextlib.suppress(Unavailable):
            self._ahead = self._submit()
        return part

    async def aclose(self) -> None:
        self._close(None)

    def close_soon(self) -> None:
        self._close(None)

    def _submit(self) -> Call[Outputs | _End]:
        assert self._generator is not None
        return self._service.submit(
            self.model, _next_part, self._generator, self._plan, self._wanted, self._deadline
        )

    def _close(self, call: Call[Any] | None) -> None:
        """Close the generator where it runs and release the handle after (never waits)."""
        if self._closed:
            return
        self._closed = True
        self._counted(False)  # before its end: failed, past its deadline, or left
        generator, self._generator = self._generator, None
        handle = self._handle
        pending = [c for c in (call, self._ahead) if c is not None]
        self._ahead = None
        closer = _Closer(generator, handle)
        running = [step for step in pending if step.abandon()]  # a queued step is dropped
        # a running step: the generator is closed on its thread once the step returns
        if running and running[0].when_returned(closer):
            return
        try:
            self._service.submit(self.model, closer)
        except Unavailable:  # queue full or closing: its finally still runs, on its own thread
            threading.Thread(target=closer, name="pyserving-stream-close", daemon=True).start()


class _Closer:
    """Closes a generator (its `finally` runs), then releases its version's handle; logs what
    the generator raised. Called once, on an execution thread."""

    __slots__ = ("generator", "handle")

    def __init__(self, generator: Iterator[Any] | None, handle: ServableHandle) -> None:
        self.generator = generator
        self.handle = handle

    def __call__(self) -> None:
        try:
            close = getattr(self.generator, "close", None)
            if close is not None:
                close()
        except Exception:
            logger.exception('streaming model "%s": closing its generator raised', self.handle.id)
        finally:
            self.generator = None
            self.handle.release()


def _next_part(
    generator: Iterator[Any], plan: _Plan, wanted: tuple[str, ...], deadline: float | None
) -> Outputs | _End:
    """On an execution thread: the generator's next part, collected (or `_END`)."""
    if deadline is not None and time.monotonic() >= deadline:
        raise DeadlineExceeded("Deadline exceeded while the stream's next part was queued")
    try:
        part = next(generator, _END)
    except ServingError:
        raise
    except Exception as exc:
        logger.debug("streaming servable raised on %s", plan.signature.name, exc_info=True)
        raise model_error(exc) from exc
    if isinstance(part, _End):
        return part
    return plan.collect(part, wanted)


class _LoopParts(PartStream):
    """An async generator's parts, computed on the event loop."""

    def __init__(
        self,
        handle: ServableHandle,
        plan: _Plan,
        wanted: tuple[str, ...],
        generator: AsyncIterator[Any],
        deadline: float | None,
        request_id: str | None,
        stats: VersionStats,
        started_ns: int,
    ) -> None:
        super().__init__(handle, plan.signature, request_id, stats, started_ns)
        self._handle = handle
        self._plan = plan
        self._wanted = wanted
        self._generator = generator
        self._deadline = deadline
        self._running = False  # inside the generator's __anext__, on the pulling task
        self._closed = False
        self._closing: asyncio.Task[None] | None = None  # close_soon's task, kept referenced

    async def next_part(self) -> Outputs | None:
        if self._closed:
            return None
        self._running = True
        try:
            async with asyncio.timeout(_remaining(self._deadline)) as timer:
                part = await anext(self._generator, _END)
        except BaseException as exc:
            self._running = False
            await self.aclose()
            if isinstance(exc, TimeoutError) and timer.expired():
                raise DeadlineExceeded(
                    "Deadline exceeded while the model was producing the next part"
                ) from None
            if isinstance(exc, ServingError) or not isinstance(exc, Exception):
                raise
            raise model_error(exc) from exc
        self._running = False
        if isinstance(part, _End):
            self._counted(True)
            await self.aclose()
            return None
        try:
            return self._plan.collect(part, self._wanted)
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._counted(False)  # before its end: failed, past its deadline, or left
        try:
            aclose = getattr(self._generator, "aclose", None)
            if aclose is not None:
                await aclose()
        except Exception:
            logger.exception('streaming model "%s": closing its generator raised', self.model)
        finally:
            self._handle.release()

    def close_soon(self) -> None:
        # A running generator is inside the pulling task, whose cancellation closes it.
        if not self._closed and not self._running and self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self.aclose())


def _start(handle: ServableHandle, signature: str, inputs: Outputs) -> Any:
    """The servable's `run` called (a generator, async generator or coroutine object)."""
    start = getattr(handle.servable, "start", None)
    if start is None:
        raise FailedPrecondition(f'model "{handle.id.name}": its servable cannot stream')
    return start(signature, inputs)


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())
