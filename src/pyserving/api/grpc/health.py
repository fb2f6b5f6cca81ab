"""`grpc.health.v1.Health`: Check and Watch for the server and each of its services.

"" (the whole server) is SERVING until shutdown starts (a liveness signal); each service name
("inference.GRPCInferenceService", "tensorflow.serving.PredictionService",
"tensorflow.serving.ModelService") is SERVING while every configured model has an AVAILABLE
version (a readiness signal); any other name is NOT_FOUND. Everything is NOT_SERVING once
`shut_down` is called.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable

import grpc
from grpc_health.v1 import health_pb2

from pyserving.api.grpc.rpc import Context, parse_sized, stream_handler, unary_handler
from pyserving.errors import NotFound

__all__ = ["SERVICE_NAME", "HealthServicer"]

SERVICE_NAME = "grpc.health.v1.Health"
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
_WATCH_POLL_S = 1.0


class HealthServicer:
    """The standard health service, answering from the server's live and ready state.

    Thread-safety: use from the server's event loop only. Blocking: never; Watch polls the
    state once a second and ends when the client goes away or the server shuts down.
    """

    def __init__(self, services: Iterable[str], is_ready: Callable[[], bool]) -> None:
        self._services = frozenset(services)
        self._is_ready = is_ready
        self._shutting_down = asyncio.Event()

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler to add to a grpc.aio server."""
        methods = {
            "Check": unary_handler(self.check, health_pb2.HealthCheckRequest),
            "Watch": stream_handler(self.watch),
        }
        return grpc.method_handlers_generic_handler(SERVICE_NAME, methods)

    def shut_down(self) -> None:
        """Report NOT_SERVING from now on (the server is draining)."""
        self._shutting_down.set()

    def status(self, service: str) -> int:
        """The ServingStatus of `service`; SERVICE_UNKNOWN for a name this server lacks."""
        if service and service not in self._services:
            return _SERVICE_UNKNOWN
        if self._shutting_down.is_set():
            return _NOT_SERVING
        if not service:
            return _SERVING
        return _SERVING if self._is_ready() else _NOT_SERVING

    async def check(
        self, request: health_pb2.HealthCheckRequest, context: Context
    ) -> health_pb2.HealthCheckResponse:
        status = self.status(request.service)
        if status == _SERVICE_UNKNOWN:
            raise NotFound(f'unknown service "{request.service[:80]}"')
        return health_pb2.HealthCheckResponse(status=status)

    async def watch(
        self, requests: AsyncIterator[bytes], context: Context
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        """Send the status now and on every change (polled), until shutdown ends the stream."""
        request = None
        async for data in requests:
            request = await parse_sized(health_pb2.HealthCheckRequest, data)
            break
        if request is None:
            return
        last = None
        while True:
            status = self.status(request.service)
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            if self._shutting_down.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._shutting_down.wait(), _WATCH_POLL_S)
