"""The edge of every RPC: parse the request bytes, run the handler, map errors to gRPC status.

Handlers are registered with identity request deserializers, so a message that does not parse
is answered INVALID_ARGUMENT naming the message type (grpc's own deserializer failure would be
INTERNAL). ServingErrors map one-to-one onto gRPC codes (`errors.Code` names are gRPC's); any
other exception is logged and answered INTERNAL with its message. A failed call naming a model
the server does not know is counted under the model label "" (`known_models`), so probing names
cannot grow the metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from pyserving import metrics
from pyserving.errors import Code, InvalidInput, ServingError
from pyserving.logs import escape_controls
from pyserving.serving import tracing
from pyserving.serving.inference import answered_version
from pyserving.serving.off_loop import run_sized

__all__ = [
    "deadline_of",
    "error_status",
    "known_models",
    "observe",
    "parse",
    "parse_sized",
    "release_frames",
    "serialize_sized",
    "status_of",
    "stream_handler",
    "unary_handler",
]

logger = logging.getLogger("pyserving.grpc")

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)
if TYPE_CHECKING:  # grpc's stubs make it generic; grpc itself does not
    Context = grpc.aio.ServicerContext[Any, Any]
else:
    Context = grpc.aio.ServicerContext
#: request → (model name for metrics, or None not to count it)
ModelOf = Callable[[Any], str | None]
#: response → the version that answered, for metrics
VersionOf = Callable[[Any], int | None]

_MAX_MESSAGE_CHARS = 1024  # TF Serving cuts longer error messages (grpc_status_util.cc)

#: name → whether the server knows that model; set per call by the server (limits.py). Unset, a
#: failed call's model is counted as "" (no label value a client chose).
known_models: ContextVar[Callable[[str], bool] | None] = ContextVar(
    "pyserving_known_models", default=None
)


def status_of(code: Code) -> grpc.StatusCode:
    """The gRPC status code of one of our codes (same names, same numbers)."""
    return grpc.StatusCode[code.name]


def deadline_of(context: Context) -> float | None:
    """The client's deadline as a `time.monotonic()` instant, or None when it set none."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def parse(request_type: type[Req], data: bytes) -> Req:
    """`data` parsed as `request_type`; InvalidInput naming the type when it does not parse."""
    try:
        return request_type.FromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise InvalidInput(
            f"cannot parse the request as {request_type.DESCRIPTOR.full_name}: {exc}"
        ) from None


async def parse_sized(request_type: type[Req], data: bytes) -> Req:
    """`parse`, off the event loop when `data` is large (parsing grows with the message)."""
    return await run_sized(len(data), parse, request_type, data)


def error_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status and message a failed RPC answers with (logs unexpected exceptions); control
    characters a client put in a name are escaped, as in the logs."""
    if isinstance(exc, ServingError):
        code, message = status_of(exc.code), exc.message
    else:
        logger.exception("unhandled error in a gRPC handler", exc_info=exc)
        code, message = grpc.StatusCode.INTERNAL, f"Internal error: {type(exc).__name__}: {exc}"
    if len(message) > _MAX_MESSAGE_CHARS:
        message = message[:_MAX_MESSAGE_CHARS] + "...TRUNCATED"
    return code, escape_controls(message)


def release_frames(exc: BaseException) -> None:
    """Clear the locals of the finished frames `exc` (and what it chains) passed through.

    A handled exception's traceback keeps every frame it left alive, and with them the request
    they decoded; when those frames are in a reference cycle (an awaited future holding the
    exception, a frame holding the exception) only a full garbage collection frees them, so a
    stream of refused large requests grows memory without bound (issue 14). Frames still
    running are left alone.
    """
    seen: set[int] = set()
    pending: BaseException | None = exc
    while pending is not None and id(pending) not in seen:
        seen.add(id(pending))
        traceback.clear_frames(pending.__traceback__)
        pending = pending.__cause__ or pending.__context__


def unary_handler(
    behavior: Callable[[Req, Context], Awaitable[Resp | bytes]],
    request_type: type[Req],
    model_of: ModelOf | None = None,
    version_of: VersionOf | None = None,
) -> Any:
    """A unary-unary method handler around `behavior`, counting it in the request metrics when
    `model_of` names a model (under the version `version_of` reads from the answer, else the
    one `answered_version` holds). `behavior` answers a message, or the answer's wire bytes."""
    package = request_type.DESCRIPTOR.full_name.partition(".")[0]
    protocol = "v2-grpc" if package == "inference" else "tfserving-grpc"

    async def handle(data: bytes, context: Context) -> bytes:
        started = time.perf_counter()
        model: str | None = None
        answered_version.set(None)
        if model_of is not None and tracing.observed:  # tracing or a request log is on
            tracing.incoming.set(tracing.Incoming(protocol, _traceparent(context)))
        try:
            try:
                request = await parse_sized(request_type, data)
            finally:
                del data  # not held by an error's frames (see release_frames)
            if model_of is not None:
                model = model_of(request)
            response = await behavior(request, context)
        except asyncio.CancelledError:
            if model is not None:
                observe(model, None, grpc.StatusCode.CANCELLED, started)
            raise
        except Exception as exc:
            code, message = error_status(exc)
            release_frames(exc)
        else:
            if model is not None:
                version = version_of(response) if version_of else None
                observe(model, version, grpc.StatusCode.OK, started)
            return await serialize_sized(response)
        # Aborted outside the except block, with the request dropped: the abort's exception
        # must not chain the error and the frames that hold the request (see release_frames).
        request = None  # type: ignore[assignment]
        if model is not None:
            observe(model, None, code, started)
        await context.abort(code, message)
        raise AssertionError("unreachable: context.abort raises")

    return grpc.unary_unary_rpc_method_handler(
        handle, request_deserializer=None, response_serializer=None
    )


def stream_handler(
    behavior: Callable[[AsyncIterator[bytes], Context], AsyncIterator[Resp]],
) -> Any:
    """A stream-stream method handler; `behavior` gets raw request bytes (use `parse`) and
    reports per-message errors itself; an exception it raises ends the stream with a status."""

    async def handle(requests: AsyncIterator[bytes], context: Context) -> AsyncIterator[bytes]:
        try:
            async for response in behavior(requests, context):
                yield await serialize_sized(response)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            code, message = error_status(exc)
            release_frames(exc)
        else:
            return
        await context.abort(code, message)  # outside the except block: see release_frames

    return grpc.stream_stream_rpc_method_handler(
        handle, request_deserializer=None, response_serializer=None
    )


def _traceparent(context: Context) -> str | None:
    """The W3C traceparent the client sent in the call's metadata, or None."""
    for key, value in context.invocation_metadata() or ():
        if key == "traceparent":
            return value if isinstance(value, str) else None
    return None


async def serialize_sized(message: Message | bytes) -> bytes:
    """`message`'s wire bytes, made off the event loop when it is large (handlers are registered
    without a response serializer, which grpc would run on the loop); a handler that wrote its
    answer's bytes itself returns them as they are."""
    if isinstance(message, bytes):
        return message
    return await run_sized(message.ByteSize(), message.SerializeToString)


def observe(model: str, version: int | None, code: grpc.StatusCode, started: float) -> None:
    """Count one answered RPC on `model` (the metric's code label is the HTTP equivalent); a
    failed one under "" unless `known_models` says the server knows `model`."""
    if code is not grpc.StatusCode.OK:
        is_known = known_models.get()
        if is_known is None or not is_known(model):
            model = ""
    if version is None:
        version = answered_version.get()  # a call refused after it resolved its version
    status = Code[code.name].http_status
    metrics.observe_request(model, version, "grpc", status, time.perf_counter() - started)
