"""A request traced and request-logged: `infer_observed` wraps `InferenceService`'s request path
while tracing is on or the request's model samples its requests into its log."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar

import numpy as np

from pyserving.errors import ServingError
from pyserving.protocols.request import InferRequest, InferResponse
from pyserving.serving import tracing
from pyserving.serving.request_log import LogEntry, RequestLogs

__all__ = ["Seen", "infer_observed"]


class Seen:
    """What a traced or logged request decoded and answered (empty until known)."""

    __slots__ = ("inputs", "outputs")

    def __init__(self) -> None:
        self.inputs: Mapping[str, np.ndarray] = {}
        self.outputs: Mapping[str, np.ndarray] = {}


async def infer_observed(
    infer: Callable[[InferRequest, Seen], Awaitable[InferResponse]],
    request: InferRequest,
    logs: RequestLogs,
    answered_version: ContextVar[int | None],
) -> InferResponse:
    """`infer(request, seen)` in its trace span (`tracing.current`), then offered to the model's
    log in `logs`; `answered_version` names the version it ran on. Raises what `infer` raises."""
    started = time.perf_counter()
    span = tracing.start_request(request.model) if tracing.enabled else None
    token = tracing.current.set(span)
    seen = Seen()
    code = "OK"
    try:
        response = await infer(request, seen)
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
        log = logs.models.get(request.model)
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
