"""The REST API as one lean ASGI application: routes only; the codecs do the formats.

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
import re
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

import orjson

from pyserving import metrics
from pyserving.api.control_auth import ControlAuth
from pyserving.api.grpc.control import ModelControl, require_control
from pyserving.api.limits import RequestBytesBudget, Reservation
from pyserving.api.rest import generate, openapi, status_page, tfserving, v2
from pyserving.api.rest.http_connection import ANSWERED_STATUS
from pyserving.api.rest.v2 import HEADER_LENGTH
from pyserving.core.monitor import why_unavailable
from pyserving.errors import InvalidInput, NotFound, ServingError, Unauthenticated
from pyserving.logs import ACCESS_LOGGER
from pyserving.protocols import v2_errors
from pyserving.protocols.request import decode_reserve, parse_version
from pyserving.serving import tracing
from pyserving.serving.execution import run_off_loop, run_sized
from pyserving.serving.inference import InferenceService, answered_version

__all__ = ["ASGIApp", "ExtraRoute", "RestOptions", "create_app"]

logger = logging.getLogger("pyserving.rest")
access_logger = logging.getLogger(ACCESS_LOGGER)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
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


_V1_LIST = re.compile(r"/v1/models/?", re.IGNORECASE)
_V1_MODEL = re.compile(
    r"/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?:(?P<metadata>/metadata)|:(?P<verb>predict|classify|regress))?",
    re.IGNORECASE,
)
_V2_REPOSITORY_MODEL = re.compile(r"/v2/repository/models/(?P<name>[^/]+)/(?P<action>load|unload)")
_V2_MODEL = re.compile(
    r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?"
    r"(?P<action>/ready|/infer|/config|/stats|/generate|/generate_stream)?"
)

_JSON = b"application/json"
_METRICS_PATHS = frozenset(("/monitoring/prometheus/metrics", "/metrics"))
_PAGE_PATHS = frozenset(("/", "/status", "/status.json", "/openapi.json"))
_METRICS_CONTENT_TYPE = metrics.CONTENT_TYPE.encode()
#: the status counted (and access-logged) for a client that left before its body arrived
_CLIENT_CLOSED = 499
#: what the current request holds in the in-flight budget (its body, then what decoding it
#: builds); released when it is answered
_reservation: ContextVar[Reservation | None] = ContextVar("pyserving_reservation", default=None)
#: the model the current request names (None: none); set by the routes, read by `_observe`
_request_model: ContextVar[str | None] = ContextVar("pyserving_request_model", default=None)
_OCTET_STREAM = b"application/octet-stream"
_NOT_FOUND = orjson.dumps({"error": "Not Found"})
_METHOD_NOT_ALLOWED = orjson.dumps({"error": "Method Not Allowed"})
_LIVE = orjson.dumps({"live": True})
_READY = orjson.dumps({"ready": True})
# wbits for zlib: 32 + 15 detects a gzip or a zlib header ("deflate" as HTTP means it).
_AUTO_HEADER = 32 + zlib.MAX_WBITS

Headers = list[tuple[bytes, bytes]]
#: a body is bytes, or an event stream the app sends part by part (`/generate_stream`)
Response = tuple[int, "bytes | generate.EventStream", Headers]


class _HttpError(Exception):
    """A response the REST layer decides on its own (404, 405, 413), not a ServingError."""

    def __init__(self, status: int, body: bytes, headers: Headers | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or []


class _Disconnected(Exception):
    """The client went away before sending its whole body, or the listener answered for us (a
    malformed body: `status`): answer nothing."""

    def __init__(self, status: int = 0) -> None:
        super().__init__(status)
        self.status = status


class _RestApp:
    """The ASGI callable. Stateless per request; safe for any number of concurrent requests."""

    __slots__ = (
        "_access_log",
        "_auth",
        "_body_timeout_s",
        "_budget",
        "_control",
        "_depth",
        "_draining",
        "_extra",
        "_labels",
        "_limit",
        "_ready_names",
        "_server_metadata",
        "_service",
        "_timeout_s",
        "_version",
    )

    #: GETs whose answer never changes, which a listener may give without calling the app
    #: (http_server.HttpServer does: liveness stays one loop turn away under any load)
    instant_answers = {b"/v2/health/live": (_JSON, _LIVE)}

    def __init__(self, service: InferenceService, options: RestOptions) -> None:
        self._service = service
        self._limit = options.max_request_bytes
        self._depth = options.max_json_depth
        self._timeout_s = options.rest_api_timeout_in_ms / 1000.0
        self._ready_names = options.ready_names or service.model_names
        self._extra = dict(options.extra_routes or {})
        self._control = options.model_control
        self._auth = options.control_auth
        self._draining = options.is_draining
        self._access_log = options.access_log
        self._body_timeout_s = options.body_read_timeout_s or None
        self._budget = options.request_budget
        self._version = options.server_version or _package_version()
        self._server_metadata = v2.server_metadata(self._version)
        self._labels = options.labels

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            # Set for every request: a pipelined one may start in the previous one's context.
            reservation = None if self._budget is None else Reservation(self._budget)
            _reservation.set(reservation)
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
        _request_model.set(None)
        answered_version.set(None)
        if tracing.observed:  # tracing or a request log is on: say who asked, and how
            tracing.incoming.set(_incoming(scope, method, path))
        try:
            status, body, headers = await self._route(method, path, scope, receive)
        except ServingError as exc:
            status, body, headers = exc.http_status, _error(exc.message), [(b"content-type", _JSON)]
        except _HttpError as exc:
            status, body, headers = exc.status, exc.body, [(b"content-type", _JSON), *exc.headers]
        except (_Disconnected, generate.ClientGone) as exc:
            self._observe(scope, method, path, exc.status or _CLIENT_CLOSED, started)
            return
        except asyncio.CancelledError:
            # Only a server shutdown cancels a request (the drain timed out): answer, then stop.
            body = _error("the server is shutting down: request cancelled after the drain timeout")
            headers = [(b"content-type", _JSON), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            self._observe(scope, method, path, 503, started)
            raise
        except Exception as exc:
            logger.exception("unhandled error answering %s %s", method, path)
            status, body = 500, _error(f"Internal error: {type(exc).__name__}: {exc}")
            headers = [(b"content-type", _JSON)]
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
        model = _request_model.get()
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
            _require(method, "GET")
            # Off the event loop: collecting a large registry takes a while.
            page = await asyncio.to_thread(metrics.render)
            return 200, page, [(b"content-type", _METRICS_CONTENT_TYPE)]
        extra = self._extra.get(path)
        if extra is not None:
            status, content_type, body = await extra(method, scope.get("query_string", b""))
            return status, body, [(b"content-type", content_type.encode())]
        if path in _PAGE_PATHS:
            _require(method, "GET")
            return await self._page(path)
        if path.startswith("/v2"):
            return await self._v2(method, path, scope, receive)
        if path[:4].lower() == "/v1/":
            return await self._v1(method, path, scope, receive)
        raise _HttpError(404, _NOT_FOUND)

    async def _page(self, path: str) -> Response:
        """The status page (`/`, `/status`), the JSON it polls, the OpenAPI document."""
        if path == "/openapi.json":
            return _ok(openapi.openapi_json(self._version))
        if path == "/status.json":
            # Off the event loop: it walks the metrics registry.
            body = await asyncio.to_thread(
                status_page.status_json, self._service, self._labels, self._version
            )
            return 200, body, [(b"content-type", _JSON), (b"cache-control", b"no-store")]
        return 200, status_page.HTML, list(status_page.HTML_HEADERS)

    # --- TF Serving ----------------------------------------------------------------------------

    async def _v1(self, method: str, path: str, scope: Scope, receive: Receive) -> Response:
        match = _V1_MODEL.fullmatch(path)
        if match is None:
            if method == "GET" and _V1_LIST.fullmatch(path):
                return _ok(tfserving.list_models(self._service))
            raise InvalidInput(f"Malformed request: {method} {path}")
        name, version_text, label, metadata, verb = match.groups()
        name = _segment(name)
        label = _segment(label) if label is not None else None
        _request_model.set(name)
        version = _version(version_text)
        service = self._service
        if verb is None:
            if method != "GET":
                raise InvalidInput(f"Malformed request: {method} {path}")
            if metadata:
                return _ok(tfserving.model_metadata(service, name, version, label))
            return _ok(tfserving.model_status(service, name, version, label))
        if method != "POST":
            raise InvalidInput(f"Malformed request: {method} {path}")
        verb = verb.lower()
        body, _ = await self._read_body(scope, receive)
        if verb != "predict":
            return _ok(
                await tfserving.classify_or_regress(
                    service, name, version, label, verb, body, self._deadline()
                )
            )
        result = await tfserving.predict(
            service, name, version, label, body, self._deadline(), self._depth
        )
        return _ok(result)

    # --- KServe V2 -----------------------------------------------------------------------------

    async def _v2(self, method: str, path: str, scope: Scope, receive: Receive) -> Response:
        service = self._service
        if path in ("/v2", "/v2/"):
            _require(method, "GET")
            return _ok(self._server_metadata)
        if path == "/v2/health/live":
            _require(method, "GET")
            return _ok(_LIVE)
        if path == "/v2/health/ready":
            _require(method, "GET")
            if self._draining is not None and self._draining():
                message = "not ready: the server is shutting down"
                return 503, _error(message), [(b"content-type", _JSON)]
            reasons = service.not_ready_reasons(self._ready_names())
            if reasons:
                # 503 for every "not ready", draining or not, with each model's reason.
                message = "not ready: " + "; ".join(
                    f"model {m}: {self._why_not_ready(m, r)}" for m, r in reasons.items()
                )
                return 503, _error(message), [(b"content-type", _JSON)]
            return _ok(_READY)
        if path.startswith("/v2/repository/"):
            return await self._v2_repository(method, path, scope, receive)
        if path == "/v2/models/stats":
            # every model's; as in Triton, this path is never model "stats"'s metadata
            _require(method, "GET")
            return _ok(await v2.model_statistics(service, "", None))
        match = _V2_MODEL.fullmatch(path)
        if match is None:
            raise _HttpError(404, _NOT_FOUND)
        name, version_text, action = match.groups()
        name = _segment(name)
        _request_model.set(name)
        version = _version(version_text)
        if action in ("/generate", "/generate_stream"):
            _require(method, "POST")
            body, _ = await self._read_body(scope, receive)
            streamed = action == "/generate_stream"
            deadline = self._deadline()
            # the stream opens (or is refused) before `answer` returns: a miss is worded here
            with v2_errors.in_triton_words():
                return await generate.answer(
                    service, name, version, body, deadline, streamed, receive, self._depth
                )
        if action == "/infer":
            _require(method, "POST")
            body, header_length = await self._read_body(scope, receive)
            result, json_length = await v2.infer(
                service, name, version, body, header_length, self._deadline(), self._depth
            )
            if json_length is None:
                return _ok(result)
            headers = [
                (b"content-type", _OCTET_STREAM),
                (HEADER_LENGTH, str(json_length).encode()),
            ]
            return 200, result, headers
        _require(method, "GET")
        if action is None:
            return _ok(v2.model_metadata(service, name, version))
        if action == "/config":
            return _ok(v2.model_config(service, name, version))
        if action == "/stats":
            return _ok(await v2.model_statistics(service, name, version))
        reason = service.model_not_ready_reason(name, version)
        if reason is None:
            return _ok(orjson.dumps({"name": name, "ready": True}))
        what = f'model "{name}"' + (f" version {version}" if version is not None else "")
        return 400, _error(f"{what} is not ready: {reason}"), [(b"content-type", _JSON)]

    def _why_not_ready(self, name: str, reason: str) -> str:
        """`reason`, with what status knows of `name`'s versions when none is AVAILABLE."""
        if self._service.available_versions(name):
            return reason
        try:
            states = self._service.model_status(name)
        except NotFound:
            states = []
        return why_unavailable(states)

    async def _v2_repository(
        self, method: str, path: str, scope: Scope, receive: Receive
    ) -> Response:
        """`POST /v2/repository/index` (always), `.../models/{m}/load|unload` (model control)."""
        if path == "/v2/repository/index":
            _require(method, "POST")
            body, _ = await self._read_body(scope, receive)
            ready_only = v2.repository_index_request(body)
            if self._control is None:
                entries = v2.index_from_service(self._service)
            else:
                entries = list(await asyncio.to_thread(self._control.repository_index))
            return _ok(v2.repository_index(entries, ready_only))
        match = _V2_REPOSITORY_MODEL.fullmatch(path)
        if match is None:
            raise _HttpError(404, _NOT_FOUND)
        _require(method, "POST")
        control = require_control(self._control)
        if self._auth is not None:
            try:
                self._auth.check(_header(scope, b"authorization"))
            except Unauthenticated as exc:
                raise _HttpError(
                    401, _error(exc.message), [(b"www-authenticate", b"Bearer")]
                ) from None
        body, _ = await self._read_body(scope, receive)
        name, action = match.groups()
        name = _segment(name)
        v2.check_repository_request(name, body, action)
        await asyncio.to_thread(
            control.load_model if action == "load" else control.unload_model, name
        )
        return _ok(b"{}")

    # --- helpers -------------------------------------------------------------------------------

    def _deadline(self) -> float | None:
        return time.monotonic() + self._timeout_s if self._timeout_s > 0 else None

    async def _read_body(self, scope: Scope, receive: Receive) -> tuple[bytes, bytes | None]:
        """The request body (decompressed) and the Inference-Header-Content-Length value.

        Raises _HttpError(413) as soon as the declared or received size passes the limit.
        """
        limit = self._limit
        encoding = header_length = None
        declared = 0
        for key, value in scope["headers"]:
            if key == b"content-length":
                declared = int(value) if value.isdigit() else 0
                if declared > limit:
                    raise _too_large(limit)
            elif key == HEADER_LENGTH:
                header_length = value
            elif key == b"content-encoding":
                encoding = value.strip().lower()
        reservation = _reservation.get()
        # What the body will hold is reserved before it is read: refused at once, unread.
        reserved = 0
        if reservation is not None and declared:
            reservation.reserve(declared)
            reserved = declared
        chunks: list[bytes] = []
        size = 0
        try:
            # One timer for the whole body: a client that trickles it cannot hold the request.
            async with asyncio.timeout(self._body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise _Disconnected(message.get(ANSWERED_STATUS, 0))
                    chunk = message.get("body", b"")
                    if chunk:
                        size += len(chunk)
                        if size > limit:
                            raise _too_large(limit)
                        if reservation is not None and size > reserved:
                            reservation.reserve(size - reserved)
                            reserved = size
                        chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            raise _HttpError(
                408,
                _error(
                    f"Request body not received within {self._body_timeout_s:g} s"
                    f" ({size} bytes arrived)"
                ),
                [(b"connection", b"close")],
            ) from None
        # Joining copies the whole body: a large one is joined on a codec thread (bytes.join
        # also releases the GIL for large joins), a small one here (execution.run_sized's rule).
        body = chunks[0] if len(chunks) == 1 else await run_sized(size, b"".join, chunks)
        if encoding and encoding != b"identity":
            # Its cost grows with the (decompressed) body: never on the event loop.
            body = await run_off_loop(_decompress, body, encoding, limit)
            if reservation is not None:
                reservation.reserve(len(body))  # held beside the compressed body
        return body, header_length


async def _lifespan(receive: Receive, send: Send) -> None:
    """Acknowledge startup and shutdown; the server owns no resources of its own."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _ok(body: bytes) -> Response:
    return 200, body, [(b"content-type", _JSON)]


def _error(message: str) -> bytes:
    return orjson.dumps({"error": message})


def _segment(raw: str) -> str:
    """A path segment as sent (latin-1 of its bytes) → the text it percent-encodes (UTF-8)."""
    if "%" not in raw and raw.isascii():
        return raw
    return unquote_to_bytes(raw.encode("latin-1")).decode("utf-8", errors="replace")


def _incoming(scope: Scope, method: str, path: str) -> tracing.Incoming:
    """The request's protocol, W3C traceparent and method, for its trace and request log."""
    protocol = "v2-rest" if path.startswith("/v2") else "tfserving-rest"
    return tracing.Incoming(protocol, _header(scope, b"traceparent"), method)


def _header(scope: Scope, name: bytes) -> str | None:
    """The first value of header `name` (lower case), or None."""
    for key, value in scope["headers"]:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _version(text: str | None) -> int | None:
    """A path's version segment (any text: the routes leave it to this) as gRPC reads a
    `model_version`, so that both transports refuse the same text with the same 400."""
    return None if text is None else parse_version(_segment(text))


def _require(method: str, allowed: str) -> None:
    if method != allowed:
        raise _HttpError(405, _METHOD_NOT_ALLOWED, [(b"allow", allowed.encode())])


def _too_large(limit: int) -> _HttpError:
    # Closing the connection spares reading the rest of a body nobody will use.
    return _HttpError(
        413,
        _error(f"Request body exceeds the limit of {limit} bytes"),
        [(b"connection", b"close")],
    )


def _decompress(body: bytes, encoding: bytes, limit: int) -> bytes:
    if encoding not in (b"gzip", b"x-gzip", b"deflate"):
        raise InvalidInput(f"unsupported Content-Encoding: {encoding.decode('latin-1')}")
    decompressor = zlib.decompressobj(_AUTO_HEADER)
    try:
        out = decompressor.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"cannot decompress the {encoding.decode()} body: {exc}") from exc
    if len(out) > limit or decompressor.unconsumed_tail:
        raise _too_large(limit)
    if not decompressor.eof:
        raise InvalidInput(f"the {encoding.decode()} body is truncated")
    return out


def _package_version() -> str:
    try:
        return importlib.metadata.version("pyserving")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
