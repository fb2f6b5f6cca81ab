"""The REST API as one lean ASGI application: the routing table; the codecs do the formats.

The `/v1` routes are tfserving.py, the `/v2` routes v2.py; request.py reads a
request within its limits, responses.py holds the answers the REST layer decides on its own.

Routes (compiled once; TF Serving's `/v1` paths match case-insensitively, as TF Serving's do):

    GET  /v1/models                                               list models (our addition)
    GET  /v1/models/{m}[/versions/{v}|/labels/{l}]                status
    GET  /v1/models/{m}[/versions/{v}|/labels/{l}]/metadata       metadata
    POST /v1/models/{m}[/versions/{v}|/labels/{l}]:predict|:classify|:regress
    GET  /v2, /v2/health/live, /v2/health/ready
    GET  /monitoring/prometheus/metrics, /metrics                   Prometheus text format
    GET  /v2/models/{m}[/versions/{v}][/ready|/config|/stats], /v2/models/stats (every model)
    POST /v2/repository/index, /v2/repository/models/{m}/load|unload (the last two: model control;
         with RestOptions.control_auth they need `Authorization: Bearer <token>`, else 401)
    POST /v2/models/{m}[/versions/{v}]/infer
    POST /v2/models/{m}[/versions/{v}]/generate|/generate_stream   Triton's generate extension
    any  paths in RestOptions.extra_routes (e.g. /metrics)
    GET  /, /status (status page), /status.json (what it shows), /openapi.json (OpenAPI 3.1)

Errors are `{"error": "..."}` with the status of the error's code (`errors.Code.http_status`);
under `/v1` a bad path or method is 400 "Malformed request: METHOD PATH" (TF Serving), elsewhere
404 `{"error": "Not Found"}` or 405. A body over `max_request_bytes` is 413, refused as soon as its
Content-Length or the bytes streamed so far say so; a body that takes longer than
`body_read_timeout_s` to arrive is 408. Both close the connection. A body that would pass the
server-wide in-flight budget (`RestOptions.request_budget`) is 503. Routes match the path as sent
(`raw_path`): a `%2F` in a model name is part of the name, never a separator. Every request that
names a model is counted in `pyserving_requests_total` (model, version that ran it, "rest",
status) and, with `access_log`, logged as one line. `http_server.HttpServer` runs it (any ASGI
server can).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from pyserving import metrics
from pyserving.api.control_auth import ControlAuth
from pyserving.api.grpc.control import ModelControl
from pyserving.api.limits import RequestBytesBudget, Reservation
from pyserving.api.rest import generate, openapi, status_page, v2
from pyserving.api.rest.asgi import ASGIApp, Receive, Scope, Send
from pyserving.api.rest.disconnect import ClientGone
from pyserving.api.rest.request import RequestLimits, header, request_model, request_reservation
from pyserving.api.rest.responses import (
    JSON,
    NOT_FOUND,
    Disconnected,
    HttpError,
    Response,
    error_json,
    ok,
    require_method,
)
from pyserving.api.rest.tfserving import TfServingRoutes
from pyserving.api.rest.v2 import LIVE, V2Routes
from pyserving.errors import ServingError
from pyserving.logs import ACCESS_LOGGER
from pyserving.protocols.request import decode_reserve
from pyserving.serving import tracing
from pyserving.serving.inference import InferenceService, answered_version

__all__ = ["ExtraRoute", "RestOptions", "create_app"]

logger = logging.getLogger("pyserving.rest")
access_logger = logging.getLogger(ACCESS_LOGGER)

#: an extra route: (method, query string) → (status, content type, body)
ExtraRoute = Callable[[str, bytes], Awaitable[tuple[int, str, bytes]]]


@dataclass(frozen=True, slots=True)
class RestOptions:
    """Limits and hooks of the REST API; field names match the CLI flags."""

    #: deadline of a predict / infer request (queueing and execution); 0 = none
    rest_api_timeout_in_ms: int = 30_000
    #: larger request bodies (after decompression too) are refused with 413
    max_request_bytes: int = 64 * 1024 * 1024
    #: JSON tensor data nested deeper than this is refused with 400
    max_json_depth: int = 32
    #: reported by `GET /v2`; "" = the installed package's version
    server_version: str = ""
    #: the configured model names `/v2/health/ready` waits for; None = every model the manager knows
    ready_names: Callable[[], Iterable[str]] | None = None
    #: exact path → handler, served before the built-in routes (e.g. "/metrics")
    extra_routes: Mapping[str, ExtraRoute] | None = None
    #: load/unload for the V2 repository API; None = model control disabled (403)
    model_control: ModelControl | None = None
    #: the bearer token load/unload need (401 without it); None = no token needed
    control_auth: ControlAuth | None = None
    #: True once the server is draining: `/v2/health/ready` answers 503 from then on
    is_draining: Callable[[], bool] | None = None
    #: log one line per request to the "pyserving.access" logger
    access_log: bool = False
    #: a request body must arrive within this many seconds, else 408; 0 = no limit
    body_read_timeout_s: float = 60.0
    #: model → label → version, shown on the status page; None = no labels shown
    labels: status_page.LabelsProvider | None = None
    #: the server-wide budget of request bytes in flight (shared with gRPC); None = none
    request_budget: RequestBytesBudget | None = None


def create_app(service: InferenceService, options: RestOptions | None = None) -> ASGIApp:
    """The ASGI application serving TF Serving REST and KServe V2 REST over `service`."""
    return _RestApp(service, options or RestOptions())


_METRICS_PATHS = frozenset(("/monitoring/prometheus/metrics", "/metrics"))
_PAGE_PATHS = frozenset(("/", "/status", "/status.json", "/openapi.json"))
_METRICS_CONTENT_TYPE = metrics.CONTENT_TYPE.encode()
#: the status counted (and access-logged) for a client that left before its body arrived
_CLIENT_CLOSED = 499


class _RestApp:
    """The ASGI callable. Stateless per request; safe for any number of concurrent requests."""

    __slots__ = (
        "_access_log",
        "_budget",
        "_extra",
        "_labels",
        "_service",
        "_tfserving",
        "_v2",
        "_version",
    )

    #: GETs whose answer never changes, which a listener may give without calling the app
    #: (http_server.HttpServer does: liveness stays one loop turn away under any load)
    instant_answers = {b"/v2/health/live": (JSON, LIVE)}

    def __init__(self, service: InferenceService, options: RestOptions) -> None:
        self._service = service
        limits = RequestLimits(
            max_request_bytes=options.max_request_bytes,
            body_read_timeout_s=options.body_read_timeout_s or None,
            timeout_s=options.rest_api_timeout_in_ms / 1000.0,
            max_json_depth=options.max_json_depth,
        )
        self._extra = dict(options.extra_routes or {})
        self._access_log = options.access_log
        self._budget = options.request_budget
        self._version = options.server_version or _package_version()
        self._labels = options.labels
        self._tfserving = TfServingRoutes(service, limits)
        self._v2 = V2Routes(
            service,
            limits,
            server_metadata=v2.server_metadata(self._version),
            ready_names=options.ready_names or service.model_names,
            is_draining=options.is_draining,
            model_control=options.model_control,
            control_auth=options.control_auth,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            # Set for every request: a pipelined one may start in the previous one's context.
            reservation = None if self._budget is None else Reservation(self._budget)
            request_reservation.set(reservation)
            decode_reserve.set(None if reservation is None else reservation.reserve)
            try:
                await self._http(scope, receive, send)
            finally:
                if reservation is not None:
                    reservation.release()
        elif kind == "lifespan":
            await _lifespan(receive, send)
        elif kind == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1003})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        method: str = scope["method"]
        raw_path = scope.get("raw_path")
        # Route on the path as sent: a %2F inside a name is never a separator.
        path: str = raw_path.decode("latin-1") if raw_path is not None else scope["path"]
        # A pipelined request may start in the previous one's context: reset both.
        request_model.set(None)
        answered_version.set(None)
        if tracing.observed:  # tracing or a request log is on: say who asked, and how
            tracing.incoming.set(_incoming(scope, method, path))
        try:
            status, body, headers = await self._route(method, path, scope, receive)
        except ServingError as exc:
            status, body, headers = (
                exc.http_status,
                error_json(exc.message),
                [(b"content-type", JSON)],
            )
        except HttpError as exc:
            status, body, headers = exc.status, exc.body, [(b"content-type", JSON), *exc.headers]
        except (Disconnected, ClientGone) as exc:
            self._observe(scope, method, path, exc.status or _CLIENT_CLOSED, started)
            return
        except asyncio.CancelledError:
            # Only a server shutdown cancels a request (the drain timed out): answer, then stop.
            body = error_json(
                "the server is shutting down: request cancelled after the drain timeout"
            )
            headers = [(b"content-type", JSON), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            self._observe(scope, method, path, 503, started)
            raise
        except Exception as exc:
            logger.exception("unhandled error answering %s %s", method, path)
            status, body = 500, error_json(f"Internal error: {type(exc).__name__}: {exc}")
            headers = [(b"content-type", JSON)]
        if isinstance(body, generate.EventStream):
            status = await body.send_to(send, headers)
            self._observe(scope, method, path, status, started)
            return
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self._observe(scope, method, path, status, started)

    def _observe(self, scope: Scope, method: str, path: str, status: int, started: float) -> None:
        """Count a request that named a model in the metrics; write its access-log line."""
        duration_s = time.perf_counter() - started
        model = request_model.get()
        if model is not None:
            # An unknown name is counted under "" so that probing names cannot add series.
            if status != 200 and model not in self._service.model_names():
                model = ""
            metrics.observe_request(model, answered_version.get(), "rest", status, duration_s)
        if self._access_log:
            client = scope.get("client")
            peer = f"{client[0]}:{client[1]}" if client else "-"
            access_logger.info(
                '%s "%s %s" %d %.2fms model=%s',
                peer,
                method,
                path,
                status,
                duration_s * 1000.0,
                model or "-",
                extra={
                    "client": peer,
                    "method": method,
                    "path": path,
                    "status": status,
                    "duration_ms": round(duration_s * 1000.0, 3),
                    "model": model,
                    "version": answered_version.get(),
                },
            )

    async def _route(self, method: str, path: str, scope: Scope, receive: Receive) -> Response:
        if path in _METRICS_PATHS:
            require_method(method, "GET")
            # Off the event loop: collecting a large registry takes a while.
            page = await asyncio.to_thread(metrics.render)
            return 200, page, [(b"content-type", _METRICS_CONTENT_TYPE)]
        extra = self._extra.get(path)
        if extra is not None:
            status, content_type, body = await extra(method, scope.get("query_string", b""))
            return status, body, [(b"content-type", content_type.encode())]
        if path in _PAGE_PATHS:
            require_method(method, "GET")
            return await self._page(path)
        if path.startswith("/v2"):
            return await self._v2.answer(method, path, scope, receive)
        if path[:4].lower() == "/v1/":
            return await self._tfserving.answer(method, path, scope, receive)
        raise HttpError(404, NOT_FOUND)

    async def _page(self, path: str) -> Response:
        """The status page (`/`, `/status`), the JSON it polls, the OpenAPI document."""
        if path == "/openapi.json":
            return ok(openapi.openapi_json(self._version))
        if path == "/status.json":
            # Off the event loop: it walks the metrics registry.
            body = await asyncio.to_thread(
                status_page.status_json, self._service, self._labels, self._version
            )
            return 200, body, [(b"content-type", JSON), (b"cache-control", b"no-store")]
        return 200, status_page.HTML, list(status_page.HTML_HEADERS)


async def _lifespan(receive: Receive, send: Send) -> None:
    """Acknowledge startup and shutdown; the server owns no resources of its own."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _incoming(scope: Scope, method: str, path: str) -> tracing.Incoming:
    """The request's protocol, W3C traceparent and method, for its trace and request log."""
    protocol = "v2-rest" if path.startswith("/v2") else "tfserving-rest"
    return tracing.Incoming(protocol, header(scope, b"traceparent"), method)


def _package_version() -> str:
    try:
        return importlib.metadata.version("pyserving")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
