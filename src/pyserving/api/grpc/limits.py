"""Per-call limits every gRPC method gets, wrapped around the handlers once at start-up.

`limit_handlers` wraps each method handler of a generic handler so that:
- a request message's bytes are held in the server-wide in-flight budget (`RequestBytesBudget`,
  shared with REST) from its arrival to its answer; one that would pass it is UNAVAILABLE;
- a client-streaming call (ModelStreamInfer) whose next message does not arrive within
  `stream_message_timeout_s` ends with DEADLINE_EXCEEDED, so a stream left half-sent or idle
  does not hold the server's buffers and a call slot forever;
- metric labels name only models the server knows (`rpc.observe` reads `known_models`).

Message size, concurrent calls and streams, idle connections and keepalive are grpc core's
own options (server.py sets them); these are the limits core has no option for.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import grpc

from pyserving.api.grpc.rpc import Context, known_models
from pyserving.api.limits import RequestBytesBudget
from pyserving.errors import DeadlineExceeded, Unavailable

__all__ = ["CallLimits", "limit_handlers"]

#: a generic RPC handler (grpc's stubs make it generic; grpc itself does not)
Handler = Any


class CallLimits:
    """What `limit_handlers` enforces; one per server.

    Thread-safety: read-only after construction; the budget is thread-safe.
    """

    def __init__(
        self,
        budget: RequestBytesBudget | None,
        stream_message_timeout_s: float | None,
        model_names: Callable[[], Iterable[str]],
    ) -> None:
        self.budget = budget
        self.stream_message_timeout_s = stream_message_timeout_s or None
        self._model_names = model_names

    def is_known(self, name: str) -> bool:
        """True when `name` is a model the server knows (loaded or not)."""
        return name in self._model_names()


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
        wrapped = None if handler is None else _wrap(handler, self._limits)
        if len(self._wrapped) < _MAX_CACHED_METHODS:  # unknown method names are not cached
            self._wrapped[method] = wrapped
        return wrapped


#: more distinct method names than any of our services has; bounds the cache against probing
_MAX_CACHED_METHODS = 256


def _wrap(handler: Any, limits: CallLimits) -> Any:
    if handler.unary_unary is not None:
        return handler._replace(unary_unary=_unary(handler.unary_unary, limits))
    if handler.unary_stream is not None:
        return handler._replace(unary_stream=_unary_stream(handler.unary_stream, limits))
    if handler.stream_unary is not None:
        return handler._replace(stream_unary=_stream_unary(handler.stream_unary, limits))
    return handler._replace(stream_stream=_stream_stream(handler.stream_stream, limits))


def _unary(behavior: Callable[..., Any], limits: CallLimits) -> Callable[..., Any]:
    budget = limits.budget

    async def handle(request: Any, context: Context) -> Any:
        known_models.set(limits.is_known)
        if budget is None or not isinstance(request, bytes):
            return await behavior(request, context)
        size = len(request)
        try:
            budget.reserve_nowait(size)
        except Unavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, exc.message)
        try:
            return await behavior(request, context)
        finally:
            budget.release(size)

    return handle


def _unary_stream(behavior: Callable[..., Any], limits: CallLimits) -> Callable[..., Any]:
    async def handle(request: Any, context: Context) -> AsyncIterator[Any]:
        known_models.set(limits.is_known)
        async for response in behavior(request, context):
            yield response

    return handle


def _stream_unary(behavior: Callable[..., Any], limits: CallLimits) -> Callable[..., Any]:
    async def handle(requests: AsyncIterator[Any], context: Context) -> Any:
        known_models.set(limits.is_known)
        return await behavior(_limited_messages(requests, limits), context)

    return handle


def _stream_stream(behavior: Callable[..., Any], limits: CallLimits) -> Callable[..., Any]:
    async def handle(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
        known_models.set(limits.is_known)
        async for response in behavior(_limited_messages(requests, limits), context):
            yield response

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
        size = len(message)
        budget.reserve_nowait(size)
        try:
            yield message
        finally:
            budget.release(size)
