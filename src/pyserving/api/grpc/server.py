"""One `grpc.aio` server on `--port` serving KServe V2, TF Serving and health.

server = GrpcServer(core.service, GrpcOptions(host, port), ready_names=core.model_names)
await server.start()          # binds; raises OSError when the port cannot be bound
...
await server.stop(grace_s)    # refuse new calls, let running ones finish within grace_s

Limits (GrpcOptions, each a `serve` flag): a request message over `max_message_bytes`
(`--max-request-bytes`, as REST's body) is RESOURCE_EXHAUSTED, as is a call past
`max_concurrent_rpcs` (health calls have a pool of their own) or a streaming call past
`max_streaming_calls`; a unary call whose message has not arrived within `request_timeout_s` is
DEADLINE_EXCEEDED; at most `max_connections` connections are open (more are closed at once,
so silent sockets cannot use up the file descriptors REST needs too), and one that has not
finished its handshake within `handshake_timeout_s` is closed; a connection opens at most
`max_concurrent_streams` streams; idle
connections close after `max_connection_idle_s`; dead peers are found by keepalive pings; a client
stream whose next message takes over `stream_message_timeout_s` ends DEADLINE_EXCEEDED; request
bytes count in the server-wide in-flight budget shared with REST (UNAVAILABLE past it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import grpc

from pyserving.api.control_auth import ControlAuth
from pyserving.api.grpc import health, tfserving, v2
from pyserving.api.grpc.control import ModelControl
from pyserving.api.grpc.limits import CallLimits, limit_handlers
from pyserving.api.limits import RequestBytesBudget
from pyserving.api.tls import TlsConfig
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
    #: `--max-request-bytes`: a larger request message is RESOURCE_EXHAUSTED
    max_message_bytes: int = 64 * 1024 * 1024
    #: calls served at once, server-wide; more are RESOURCE_EXHAUSTED; 0 = no bound (health
    #: and readiness calls have a pool of the same size of their own)
    max_concurrent_rpcs: int = 1024
    #: streaming calls (ModelStreamInfer, health Watch) open at once, within max_concurrent_rpcs
    max_streaming_calls: int = 256
    #: a unary call's request message must arrive within this long; 0 = no limit
    request_timeout_s: float = 30.0
    #: open connections; one more is closed at once (`--grpc-max-connections`)
    max_connections: int = 1024
    #: a connection whose (TLS) handshake takes longer is closed
    handshake_timeout_s: float = 10.0
    #: streams one connection may open at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS)
    max_concurrent_streams: int = 128
    #: a connection without calls for this long is closed (GOAWAY); 0 = never
    max_connection_idle_s: float = 300.0
    #: ping a quiet connection this often; close it when a ping is unanswered for the timeout
    keepalive_time_s: float = 60.0
    keepalive_timeout_s: float = 20.0
    #: a client stream's next message must arrive within this long; 0 = no limit
    stream_message_timeout_s: float = 60.0
    #: reported by ServerMetadata; "" = the installed package's version
    server_version: str = ""
    #: `--ssl_config_file`: serve TLS (mutual with client_verify); None = plain text
    tls: TlsConfig | None = None
    #: share the port with the other `--workers` processes (SO_REUSEPORT); off, a second
    #: server on the port fails to start instead
    reuse_port: bool = False


class GrpcServer:
    """The gRPC API over one InferenceService.

    Thread-safety: `start` and `stop` are awaited on the event loop that serves, once each.
    Blocking: `stop` waits up to its grace period for running calls, then cancels them.
    Ownership: `model_control` (None = model control disabled) and the service stay the caller's;
    `control_auth` (None = no token needed) guards the model-control RPCs.
    """

    def __init__(
        self,
        service: InferenceService,
        options: GrpcOptions | None = None,
        ready_names: Callable[[], Iterable[str]] | None = None,
        model_control: ModelControl | None = None,
        request_budget: RequestBytesBudget | None = None,
        control_auth: ControlAuth | None = None,
    ) -> None:
        self.options = options or GrpcOptions()
        self.port = 0
        options = self.options
        self._limits = CallLimits(
            request_budget,
            options.stream_message_timeout_s,
            service.model_names,
            max_calls=options.max_concurrent_rpcs,
            max_stream_calls=options.max_streaming_calls,
            request_timeout_s=options.request_timeout_s,
            max_message_bytes=options.max_message_bytes,
        )
        names = ready_names or service.model_names
        self._health = health.HealthServicer(
            (v2.SERVICE_NAME, tfserving.PREDICTION_SERVICE, tfserving.MODEL_SERVICE),
            lambda: service.is_ready(names()),
        )
        self._handlers = (
            v2.V2Servicer(
                service, names, model_control, self.options.server_version, control_auth
            ).handler(),
            tfserving.PredictionServicer(service).handler(),
            tfserving.ModelServicer(service, model_control, control_auth).handler(),
            self._health.handler(),
        )
        self._server: grpc.aio.Server | None = None

    async def start(self) -> int:
        """Bind and start serving; returns the bound port. Raises OSError if it cannot bind."""
        # Calls are admitted by limits.py (health exempt), not by maximum_concurrent_rpcs.
        server = grpc.aio.server(options=_core_options(self.options))
        server.add_generic_rpc_handlers(limit_handlers(self._handlers, self._limits))
        host = self.options.host
        address = f"[{host}]:{self.options.port}" if ":" in host else f"{host}:{self.options.port}"
        tls = self.options.tls
        try:
            if tls is None:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, tls.grpc_credentials())
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {address}: {exc}") from exc
        if port == 0:
            raise OSError(f"cannot listen on {address}")
        await server.start()
        self._server = server
        self.port = port
        logger.info(
            "gRPC API listening on %s:%d%s",
            host,
            port,
            "" if tls is None else (" (mutual TLS)" if tls.client_verify else " (TLS)"),
        )
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


def _core_options(options: GrpcOptions) -> list[tuple[str, int]]:
    """grpc core's channel arguments for `options`."""
    core = [
        ("grpc.max_receive_message_length", options.max_message_bytes),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),  # answers are ours to size
        ("grpc.max_concurrent_streams", options.max_concurrent_streams),
        ("grpc.keepalive_time_ms", int(options.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(options.keepalive_timeout_s * 1000)),
        ("grpc.so_reuseport", int(options.reuse_port)),
        ("grpc.max_allowed_incoming_connections", options.max_connections),
        ("grpc.server_handshake_timeout_ms", int(options.handshake_timeout_s * 1000)),
    ]
    if options.max_connection_idle_s:
        core.append(("grpc.max_connection_idle_ms", int(options.max_connection_idle_s * 1000)))
    return core
