"""Serving REST and gRPC until SIGTERM/SIGINT, then the graceful drain: the listeners' limits,
the drain's state, and the listeners' lifecycle within one `pyserving serve` process."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import Awaitable
from dataclasses import replace
from typing import Any

from pyserving import __version__, metrics
from pyserving.api.control_auth import ControlAuth
from pyserving.api.grpc.server import GrpcOptions, GrpcServer
from pyserving.api.limits import RequestBytesBudget
from pyserving.api.rest.app import RestOptions, create_app
from pyserving.api.rest.asgi import ASGIApp
from pyserving.api.rest.http_server import HttpOptions, HttpServer
from pyserving.api.tls import TlsConfig
from pyserving.serving.monitoring import watch_event_loop_lag
from pyserving.serving.server_core import ServerCore, ServerOptions
from pyserving.workers.hooks import WorkerHooks

logger = logging.getLogger("pyserving")


class TransportLimits:
    """The listeners' limits from the flags; the one in-flight budget REST and gRPC share."""

    def __init__(self, args: argparse.Namespace, max_request_bytes: int) -> None:
        self.budget = RequestBytesBudget(args.max_inflight_request_bytes)
        self.http = HttpOptions(
            max_connections=args.rest_max_connections,
            write_timeout_s=args.rest_write_timeout_seconds,
        )
        self.grpc = GrpcOptions(
            max_message_bytes=max_request_bytes,
            max_connections=args.grpc_max_connections,
            max_concurrent_rpcs=args.grpc_max_concurrent_rpcs,
            max_concurrent_streams=args.grpc_max_concurrent_streams,
            max_connection_idle_s=args.grpc_max_connection_idle_seconds,
            keepalive_time_s=args.grpc_keepalive_time_seconds,
            keepalive_timeout_s=args.grpc_keepalive_timeout_seconds,
            stream_message_timeout_s=args.grpc_stream_message_timeout_seconds,
            request_timeout_s=args.grpc_request_timeout_seconds,
            max_streaming_calls=args.grpc_max_streaming_calls,
        )


class Drain:
    """The graceful-stop state of one `serve`: the first SIGTERM/SIGINT starts the drain, a
    second one exits at once.

    Thread-safety: signals arrive on the event loop; `is_draining` may be read from any thread.
    """

    def __init__(
        self,
        timeout_s: float,
        body_read_timeout_s: float,
        access_log: bool,
        limits: TransportLimits,
    ) -> None:
        self.timeout_s = timeout_s
        self.body_read_timeout_s = body_read_timeout_s
        self.access_log = access_log
        self.limits = limits
        self.requested: asyncio.Event | None = None  # made on the serving loop
        self._draining = False
        self._started_at: float | None = None  # time.monotonic() when the drain started
        self._refused_before = 0  # _answers_refusing() when the drain started

    def is_draining(self) -> bool:
        return self._draining

    def install(self) -> None:
        """Handle SIGINT and SIGTERM on the running loop from now on."""
        loop = asyncio.get_running_loop()
        self.requested = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def uninstall(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

    def start(self) -> None:
        """Readiness answers false from now on (the first step of the drain)."""
        self._draining = True
        self._started_at = time.monotonic()
        self._refused_before = _answers_refusing()

    def report(self, still_running: int) -> None:
        """Log what the drain did, as clients saw it: how long it took, whether the timeout
        cut it short, and how many requests were answered 503 (CANCELLED on gRPC) meanwhile.

        `still_running`: calls whose clients were answered but whose model code still runs.
        """
        elapsed = self.timeout_s - self.remaining_s()
        refused = _answers_refusing() - self._refused_before
        running = f"; {still_running} call(s) still running in model code" if still_running else ""
        if elapsed >= self.timeout_s:
            logger.warning(
                "drain timed out after %gs: %d request(s) cancelled (answered 503 or CANCELLED)%s",
                self.timeout_s,
                refused,
                running,
            )
        elif refused or still_running:
            logger.warning(
                "drain finished in %.3fs, within its %gs: %d request(s) answered 503 or"
                " CANCELLED%s",
                elapsed,
                self.timeout_s,
                refused,
                running,
            )
        else:
            logger.info("drain finished in %.3fs: every in-flight request completed", elapsed)

    def remaining_s(self) -> float:
        """What is left of the drain timeout (all of it before the drain started)."""
        if self._started_at is None:
            return self.timeout_s
        return max(0.0, self.timeout_s - (time.monotonic() - self._started_at))

    def _on_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        assert self.requested is not None
        if self.requested.is_set():
            logger.warning("received %s again: exiting now, without draining", name)
            exit_now(1)
        logger.info(
            "received %s: draining (readiness false, no new connections, up to %gs for"
            " in-flight requests)",
            name,
            self.timeout_s,
        )
        self.requested.set()


def _answers_refusing() -> int:
    """Requests answered so far with 503 (REST, or gRPC UNAVAILABLE) or 499 (CANCELLED)."""
    return int(
        sum(
            sample.value
            for family in metrics.REQUESTS.collect()
            for sample in family.samples
            if sample.name.endswith("_total") and sample.labels.get("code") in ("503", "499")
        )
    )


def exit_now(code: int) -> None:
    """Flush the logs and end the process at once (threads stuck in model code cannot be
    joined, and a normal exit would wait for them)."""
    logging.shutdown()
    os._exit(code)


async def serve_listeners(
    core: ServerCore,
    options: ServerOptions,
    sock: socket.socket | None,
    drain: Drain,
    tls: TlsConfig | None = None,
    auth: ControlAuth | None = None,
    worker: WorkerHooks | None = None,
) -> None:
    """Serve REST (on `sock`) and gRPC until SIGTERM/SIGINT, then drain: readiness goes false,
    both listeners stop accepting, in-flight requests finish (bounded by `drain.timeout_s`;
    later ones are cancelled). Models are unloaded by the caller afterwards. With `tls`, both
    listeners speak only TLS; with `auth`, model-control calls need its token."""
    drain.install()
    assert drain.requested is not None
    grpc_server: GrpcServer | None = None
    rest: HttpServer | None = None
    waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(drain.requested.wait())]
    lag_watcher = asyncio.ensure_future(watch_event_loop_lag(metrics.EVENT_LOOP_LAG.observe))
    control: Any = core if options.enable_model_control else None
    if control is not None and worker is not None:
        control = worker.model_control(core)
    load_first = worker is not None and worker.load_before_listening
    try:
        if load_first:
            await asyncio.to_thread(core.start)
        if options.port:
            grpc_server = GrpcServer(
                core.service,
                replace(
                    drain.limits.grpc,
                    host=options.host,
                    port=options.port,
                    reuse_port=worker is not None,
                    server_version=__version__,
                    tls=tls,
                ),
                ready_names=core.model_names,
                model_control=control,
                request_budget=drain.limits.budget,
                control_auth=auth,
            )
            await grpc_server.start()  # logs "gRPC API listening on HOST:PORT"
        if sock is not None:
            rest = HttpServer(
                options=drain.limits.http, app=_rest_app(core, options, drain, auth, control)
            )
            ssl_context: ssl.SSLContext | None = tls.ssl_context() if tls is not None else None
            await rest.start(sock, ssl=ssl_context)
            host, port = sock.getsockname()[:2]
            scheme = "https" if ssl_context is not None else "http"
            logger.info("REST API listening on %s://%s:%d", scheme, host, port)
        # Initial loads run off the event loop, so health/live answers while models load; a
        # daemon thread, so a SIGTERM during a long first load does not wait for it.
        if not load_first:
            threading.Thread(target=core.start, name="pyserving-initial-load", daemon=True).start()
        if worker is not None:
            worker.serving(core, lambda: drain.limits.budget.used_bytes)
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        drain.start()
        # Calls that were abandoned before the drain (deadline) are no drained requests.
        stuck_before = core.service.executor.stuck_calls
        stopping: list[Awaitable[Any]] = []
        if rest is not None:
            stopping.append(rest.shutdown(drain.timeout_s))
        if grpc_server is not None:
            stopping.append(grpc_server.stop(drain.timeout_s))
        await asyncio.gather(*stopping)
        drain.report(max(0, core.service.pending_requests - stuck_before))
    finally:
        lag_watcher.cancel()
        for waiter in waiters:
            waiter.cancel()
        if grpc_server is not None:
            await grpc_server.stop(0)  # idempotent; stops it when serving failed early
        drain.uninstall()


def _rest_app(
    core: ServerCore,
    options: ServerOptions,
    drain: Drain,
    auth: ControlAuth | None = None,
    control: Any = None,
) -> ASGIApp:
    return create_app(
        core.service,
        RestOptions(
            rest_api_timeout_in_ms=options.rest_api_timeout_in_ms,
            max_request_bytes=options.max_request_bytes,
            server_version=__version__,
            ready_names=core.model_names,
            model_control=control,
            control_auth=auth,
            is_draining=drain.is_draining,
            access_log=drain.access_log,
            body_read_timeout_s=drain.body_read_timeout_s,
            request_budget=drain.limits.budget,
            labels=lambda: {m.name: m.labels for m in core.config.models},
        ),
    )
