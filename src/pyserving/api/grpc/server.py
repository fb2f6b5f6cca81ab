"""One `grpc.aio` server on `--port` serving KServe V2, TF Serving and health.

server = GrpcServer(core.service, GrpcOptions(host, port), ready_names=core.model_names)
await server.start()          # binds; raises OSError when the port cannot be bound
...
await server.stop(grace_s)    # refuse new calls, let running ones finish within grace_s
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import grpc

from pyserving.api.grpc import health, tfserving, v2
from pyserving.api.grpc.control import ModelControl
from pyserving.serving.inference import InferenceService

__all__ = ["GrpcOptions", "GrpcServer"]

logger = logging.getLogger("pyserving.grpc")

#: TF Serving and tritonclient both use INT32_MAX for message limits ("2 GiB")
MAX_MESSAGE_BYTES = 2**31 - 1


@dataclass(frozen=True, slots=True)
class GrpcOptions:
    """Where and how the gRPC server listens; field names match the CLI flags."""

    host: str = "0.0.0.0"
    #: 0 picks a free port (the bound one is returned by `start`)
    port: int = 8500
    max_message_bytes: int = MAX_MESSAGE_BYTES
    #: reported by ServerMetadata; "" = the installed package's version
    server_version: str = ""


class GrpcServer:
    """The gRPC API over one InferenceService.

    Thread-safety: `start` and `stop` are awaited on the event loop that serves, once each.
    Blocking: `stop` waits up to its grace period for running calls, then cancels them.
    Ownership: `model_control` (None = model control disabled) and the service stay the caller's.
    """

    def __init__(
        self,
        service: InferenceService,
        options: GrpcOptions | None = None,
        ready_names: Callable[[], Iterable[str]] | None = None,
        model_control: ModelControl | None = None,
    ) -> None:
        self.options = options or GrpcOptions()
        self.port = 0
        names = ready_names or service.model_names
        self._health = health.HealthServicer(
            (v2.SERVICE_NAME, tfserving.PREDICTION_SERVICE, tfserving.MODEL_SERVICE),
            lambda: service.is_ready(names()),
        )
        self._handlers = (
            v2.V2Servicer(service, names, model_control, self.options.server_version).handler(),
            tfserving.PredictionServicer(service).handler(),
            tfserving.ModelServicer(service, model_control).handler(),
            self._health.handler(),
        )
        self._server: grpc.aio.Server | None = None

    async def start(self) -> int:
        """Bind and start serving; returns the bound port. Raises OSError if it cannot bind."""
        limit = self.options.max_message_bytes
        server = grpc.aio.server(
            options=[
                ("grpc.max_send_message_length", limit),
                ("grpc.max_receive_message_length", limit),
                ("grpc.so_reuseport", 0),
            ]
        )
        server.add_generic_rpc_handlers(self._handlers)
        host = self.options.host
        address = f"[{host}]:{self.options.port}" if ":" in host else f"{host}:{self.options.port}"
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {address}: {exc}") from exc
        if port == 0:
            raise OSError(f"cannot listen on {address}")
        await server.start()
        self._server = server
        self.port = port
        logger.info("gRPC API listening on %s:%d", host, port)
        return port

    async def stop(self, grace_s: float | None = 30.0) -> None:
        """Report NOT_SERVING, refuse new calls, wait up to `grace_s` for running ones (None =
        until they finish), then cancel what is left. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        self._health.shut_down()
        await server.stop(grace_s)

    async def wait_for_termination(self) -> None:
        """Wait until the server stops (returns at once if it is not running)."""
        if self._server is not None:
            await self._server.wait_for_termination()
