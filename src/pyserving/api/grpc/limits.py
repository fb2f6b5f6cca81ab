"""Per-call limits every gRPC method gets, wrapped around the handlers once at start-up.

`limit_handlers` wraps each method handler of a generic handler so that:
- calls are admitted by our own count, not grpc's `maximum_concurrent_rpcs`: past
  `max_calls` a call is RESOURCE_EXHAUSTED, and streaming calls (ModelStreamInfer, Watch) also
  count against the smaller `max_stream_calls`, so idle streams cannot take every slot; health
  and readiness calls (`HEALTH_METHODS`) have a pool of their own, so a full server still
  answers its probes;
- a unary method is served as a client-streaming one, so the handler starts at the call's
  headers and its request message must arrive within `request_timeout_s` (DEADLINE_EXCEEDED):
  a half-sent call cannot hold a slot and its buffered bytes for ever; grpc's own unary path
  would wait for the message without limit;
- a request message's bytes are held in the server-wide in-flight budget (`RequestBytesBudget`,
  shared with REST) from its arrival to its answer; one that would pass it is UNAVAILABLE;
- a client-streaming call whose next message does not arrive within
  `stream_message_timeout_s` ends with DEADLINE_EXCEEDED;
- metric labels name only models the server knows (`rpc.observe` reads `known_models`).

Message size, streams per connection, idle connections and keepalive are grpc core's own
options (server.py sets them).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import grpc

from pyserving.api.grpc.rpc import Context, known_models, release_frames, status_of
from pyserving.api.limits import RequestBytesBudget, Reservation
from pyserving.errors import (
    DeadlineExceeded,
    InvalidInput,
    ResourceExhausted,
    ServingError,
)
from pyserving.protocols.request import decode_reserve

__all__ = ["HEALTH_METHODS", "CallLimits", "limit_handlers"]

#: a generic RPC handler (grpc's stubs make it generic; grpc itself does not)
Handler = Any

#: probes served from their own pool: a server full of calls still says it is alive. Unary
#: only: a health Watch lasts as long as its client likes, so it is a streaming call like others.
HEALTH_METHODS = frozenset(
    {
        "/grpc.health.v1.Health/Check",
        "/inference.GRPCInferenceService/ServerLive",
        "/inference.GRPCInferenceService/ServerReady",
        "/inference.GRPCInferenceService/ModelReady",
        "/tensorflow.serving.ModelService/GetModelStatus",
    }
)


class CallLimits:
    """What `limit_handlers` enforces, and the calls in flight; one per server.

    Thread-safety: the counts are changed on the server's event loop only; the budget is
    thread-safe.
    """

    def __init__(
        self,
        budget: RequestBytesBudget | None,
        stream_message_timeout_s: float | None,
        model_names: Callable[[], Iterable[str]],
        max_calls: int = 0,
        max_stream_calls: int = 0,
        request_timeout_s: float | None = None,
        max_message_bytes: int = 0,
    ) -> None:
        self.budget = budget
        #: --max-request-bytes: what a unary message still arriving holds in the budget
        self.max_message_bytes = max_message_bytes
        self.stream_message_timeout_s = stream_message_timeout_s or None
        self.request_timeout_s = request_timeout_s or None
        #: 0 = no bound
        self.max_calls = max_calls
        self.max_stream_calls = max_stream_calls
        self._model_names = model_names
        self.calls = 0  # admitted calls other than health
        self.stream_calls = 0  # of which client-streaming
        self.health_calls = 0

    def is_known(self, name: str) -> bool:
        """True when `name` is a model the server knows (loaded or not)."""
        return name in self._model_names()

    def admit(self, method: str, streaming: bool) -> Callable[[], None]:
        """Count one call of `method`; returns what ends it (call once). Raises
        ResourceExhausted when its pool is full."""
        if method in HEALTH_METHODS:
            if self.max_calls and self.health_calls >= self.max_calls:
                raise ResourceExhausted(
                    f"the server is answering {self.health_calls} health calls: retry later"
                )
            self.health_calls += 1

            def end_health() -> None:
                self.health_calls -= 1

            return end_health
        if self.max_calls and self.calls >= self.max_calls:
            raise ResourceExhausted(
                f"the server is serving {self.calls} calls (--grpc-max-concurrent-rpcs):"
                " retry later"
            )
        if streaming and self.max_stream_calls and self.stream_calls >= self.max_stream_calls:
            raise ResourceExhausted(
                f"the server has {self.stream_calls} streaming calls open"
                " (--grpc-max-streaming-calls): retry later"
            )
        self.calls += 1
        self.stream_calls += streaming

        def end() -> None:
            self.calls -= 1
            self.stream_calls -= streaming

        return end


def limit_handlers(handlers: Iterable[Handler], limits: CallLimits) -> tuple[Handler, ...]:
    """`handlers` with every method they serve wrapped in `limits`."""
    return tuple(_LimitedHandler(handler, limits) for handler in handlers)


class _LimitedHandler(grpc.GenericRpcHandler):
    """A generic handler whose method handlers are wrapped (once per method, then cached)."""

    def __init__(self, inner: Handler, limits: CallLimits) -> None:
        self._inner = inner
        self._limits = limits
        self._wrapped: dict[str, Any] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        method: str = handler_call_details.method
        try:
            return self._wrapped[method]
        except KeyError:
            pass
        handler = self._inner.service(handler_call_details)
        wrapped = None if handler is None else _wrap(handler, method, self._limits)
        if len(self._wrapped) < _MAX_CACHED_METHODS:  # unknown method names are not cached
            self._wrapped[method] = wrapped
        return wrapped


#: more distinct method names than any of our services has; bounds the cache against probing
_MAX_CACHED_METHODS = 256


def _wrap(handler: Any, method: str, limits: CallLimits) -> Any:
    if handler.unary_unary is not None:
        # Served as stream-unary: the wire is the same, and the handler starts at the headers.
        return handler._replace(
            request_streaming=True,
            unary_unary=None,
            stream_unary=_unary(handler.unary_unary, method, limits),
        )
    if handler.stream_stream is not None:
        return handler._replace(stream_stream=_stream_stream(handler.stream_stream, method, limits))
    raise TypeError(f"{method}: only unary and bidirectional-streaming methods are wrapped")


def _nothing() -> None:
    pass


#: a unary message still arriving after this long is held in the budget at its largest size
_SLOW_MESSAGE_S = 1.0


async def _receive_one(
    context: Context,
    timeout_s: float | None,
    budget: RequestBytesBudget | None,
    stand_in_bytes: int,
) -> bytes:
    """A unary call's request message; DeadlineExceeded when it is not all there in time.

    grpc buffers a message until it is whole and says nothing of its size before, so one still
    arriving after `_SLOW_MESSAGE_S` holds `stand_in_bytes` (the largest message allowed) in the
    budget until it is there: Unavailable when that does not fit. Half-sent calls then cost the
    server at most the budget, not calls x --max-request-bytes; quick ones are not held.

    Read with `context.read`, not the handler's request iterator: that async generator would
    stay suspended holding the message for as long as the call's frames live. Awaited in this
    task, with loop timers for the slow message and the timeout (`_ReadTimers`), not in a task
    of its own under `asyncio.wait`: that costs every call a task and two futures.
    """
    task = asyncio.current_task()
    assert task is not None  # grpc.aio runs each call's handler in a task
    timers = _ReadTimers(task, timeout_s, budget, stand_in_bytes)
    message: object = None
    try:
        message = await context.read()
    except asyncio.CancelledError:
        if timers.error is None:
            raise  # the call itself was cancelled
    finally:
        timers.stop()
    if timers.error is not None:
        task.uncancel()  # the cancellation was the timer's own: answer its error instead
        raise timers.error
    if not isinstance(message, bytes):  # grpc.aio.EOF: the client half-closed without one
        raise InvalidInput("the call ended without a request message")
    return message


class _ReadTimers:
    """The timers of one `_receive_one`: at `_SLOW_MESSAGE_S` hold the stand-in bytes in the
    budget, at `timeout_s` give up; either failure cancels the reading task with `error` set.

    Thread-safety: created, fired and stopped on the call's event loop only.
    """

    __slots__ = ("_budget", "_handle", "_stand_in", "_task", "_timeout_s", "error", "held")

    def __init__(
        self,
        task: asyncio.Task[Any],
        timeout_s: float | None,
        budget: RequestBytesBudget | None,
        stand_in_bytes: int,
    ) -> None:
        self._task = task
        self._timeout_s = timeout_s
        self._budget = budget
        self._stand_in = stand_in_bytes
        self.error: ServingError | None = None
        self.held = 0
        loop = task.get_loop()
        self._handle: asyncio.TimerHandle | None = None
        if budget is not None and (timeout_s is None or timeout_s > _SLOW_MESSAGE_S):
            self._handle = loop.call_later(_SLOW_MESSAGE_S, self._on_slow)
        elif timeout_s is not None:
            self._handle = loop.call_later(timeout_s, self._on_timeout)

    def _on_slow(self) -> None:
        assert self._budget is not None
        try:
            self._budget.reserve_nowait(self._stand_in)
        except ServingError as exc:
            self._fail(exc)
            return
        self.held = self._stand_in
        if self._timeout_s is not None:
            later = self._timeout_s - _SLOW_MESSAGE_S
            self._handle = self._task.get_loop().call_later(later, self._on_timeout)

    def _on_timeout(self) -> None:
        self._fail(
            DeadlineExceeded(
                f"the request message did not arrive within {self._timeout_s:g} s"
                " (--grpc-request-timeout-seconds)"
            )
        )

    def _fail(self, error: ServingError) -> None:
        self._handle = None
        self.error = error
        self._task.cancel()

    def stop(self) -> None:
        """Cancel the pending timer, release the stand-in bytes; once, when the read ends."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self.held and self._budget is not None:
            self._budget.release(self.held)
            self.held = 0


def _unary(behavior: Callable[..., Any], method: str, limits: CallLimits) -> Callable[..., Any]:
    budget = limits.budget
    timeout_s = limits.request_timeout_s

    async def handle(requests: AsyncIterator[Any], context: Context) -> Any:
        known_models.set(limits.is_known)
        end = _nothing
        reservation = None
        try:
            end = limits.admit(method, streaming=False)
            message = await _receive_one(context, timeout_s, budget, limits.max_message_bytes)
            if budget is not None:
                # The message, then what decoding it builds (`decode_reserve`), until the answer.
                reservation = Reservation(budget)
                reservation.reserve(len(message))
                decode_reserve.set(reservation.reserve)
        except ServingError as exc:
            code, text = status_of(exc.code), exc.message
            release_frames(exc)
        except BaseException:
            end()
            raise
        else:
            try:
                return await behavior(message, context)
            finally:
                del message  # not held by the abort's frames (see rpc.release_frames)
                if reservation is not None:
                    reservation.release()
                end()
        end()
        await context.abort(code, text)  # outside the except block: see rpc.release_frames
        raise AssertionError("unreachable: context.abort raises")

    return handle


def _stream_stream(
    behavior: Callable[..., Any], method: str, limits: CallLimits
) -> Callable[..., Any]:
    async def handle(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
        known_models.set(limits.is_known)
        try:
            end = limits.admit(method, streaming=True)
        except ResourceExhausted as exc:
            text = exc.message
        else:
            try:
                async for response in behavior(_limited_messages(requests, limits), context):
                    yield response
            finally:
                end()
            return
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, text)

    return handle


async def _limited_messages(requests: AsyncIterator[Any], limits: CallLimits) -> AsyncIterator[Any]:
    """The messages of a client stream, each held in the budget until the handler asks for the
    next one (it has answered this one by then); DeadlineExceeded when the next does not arrive
    within the stream message timeout, Unavailable when one would pass the budget."""
    budget = limits.budget
    timeout_s = limits.stream_message_timeout_s
    iterator = aiter(requests)
    while True:
        try:
            async with asyncio.timeout(timeout_s):
                message = await anext(iterator)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise DeadlineExceeded(
                f"no complete request message on this stream within {timeout_s:g} s"
                " (--grpc-stream-message-timeout-seconds): stream closed"
            ) from None
        if budget is None or not isinstance(message, bytes):
            yield message
            continue
        # The message, then what decoding it builds (`decode_reserve`: the handler answers one
        # message before it asks for the next, in this task's context), until the answer.
        reservation = Reservation(budget)
        reservation.reserve(len(message))
        decode_reserve.set(reservation.reserve)
        try:
            yield message
        finally:
            decode_reserve.set(None)
            reservation.release()
