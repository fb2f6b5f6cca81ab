"""The KServe V2 REST API (`/v2/...`): its routes and its codec, the JSON (+ binary tensor data)
body ⇄ protocols.v2.

Routes: server metadata, health, model metadata, config, statistics and readiness, infer, Triton's
generate extension (generate.py does its format), and the repository API (index always;
load/unload only with model control). The protocol's rules live in `pyserving.protocols.v2`,
shared with the gRPC API; this module reads the REST framing, calls the service and writes JSON.
With the binary tensor data extension a body is a JSON header of `Inference-Header-Content-Length`
bytes followed by the raw tensors of the binary inputs (outputs) in the order they are listed
(`protocols.tensors` reads and writes them). Codec functions return the body of a 200 answer or
raise a ServingError. Parsing, decoding and encoding that grow with the request leave the event
loop (`off_loop.run_sized`).
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Callable, Iterable, Mapping

import orjson

from pyserving.api.control_auth import ControlAuth
from pyserving.api.grpc.control import ModelControl, require_control
from pyserving.api.rest import generate
from pyserving.api.rest.asgi import Receive, Scope
from pyserving.api.rest.disconnect import until_client_gone
from pyserving.api.rest.request import (
    HEADER_LENGTH,
    RequestLimits,
    header,
    path_segment,
    path_version,
    request_model,
)
from pyserving.api.rest.responses import (
    JSON,
    NOT_FOUND,
    OCTET_STREAM,
    HttpError,
    Response,
    error_json,
    ok,
    require_method,
)
from pyserving.core.monitor import why_unavailable
from pyserving.errors import InvalidInput, NotFound, Unauthenticated
from pyserving.protocols import v2, v2_errors, v2_metadata, v2_statistics
from pyserving.protocols.json_tensor import parse_json
from pyserving.serving.inference import InferenceService
from pyserving.serving.off_loop import run_sized
from pyserving.serving.pipeline import client_watch

__all__ = [
    "LIVE",
    "V2Routes",
    "check_repository_request",
    "index_from_service",
    "infer",
    "model_config",
    "model_metadata",
    "model_statistics",
    "repository_index",
    "repository_index_request",
    "server_metadata",
    "split_body",
]


def server_metadata(server_version: str) -> bytes:
    """`GET /v2`: name, version and extensions."""
    return orjson.dumps(v2_metadata.server_metadata(server_version, v2_metadata.REST_EXTENSIONS))


def model_metadata(service: InferenceService, name: str, version: int | None) -> bytes:
    """`GET /v2/models/{m}[/versions/{v}]`: versions, platform, inputs and outputs."""
    with v2_errors.in_triton_words(), service.acquire(name, version) as handle:
        signature = service.signature(handle, None)
        servable = handle.servable
    versions = service.available_versions(name)
    return orjson.dumps(v2_metadata.model_metadata(name, versions, servable, signature))


def model_config(service: InferenceService, name: str, version: int | None) -> bytes:
    """`GET /v2/models/{m}[/versions/{v}]/config`: a Triton-style model configuration."""
    with v2_errors.in_triton_words(), service.acquire(name, version) as handle:
        signature = service.signature(handle, None)
        servable = handle.servable
    return orjson.dumps(v2_metadata.model_config(name, servable, signature))


async def model_statistics(service: InferenceService, name: str, version: int | None) -> bytes:
    """`GET /v2/models[/{m}[/versions/{v}]]/stats`: Triton's `{"model_stats": [...]}`."""
    # Off the event loop, encoding included: both grow with the models and versions served.
    return await asyncio.to_thread(_statistics_json, service, name, version)


def _statistics_json(service: InferenceService, name: str, version: int | None) -> bytes:
    return orjson.dumps(v2_statistics.model_statistics(service, name, version))


async def infer(
    service: InferenceService,
    name: str,
    version: int | None,
    body: bytes,
    header_length: bytes | None,
    deadline: float | None,
    max_json_depth: int,
) -> tuple[bytes, int | None]:
    """`POST .../infer`: returns (response body, JSON header length when it carries binary data).

    `header_length` is the raw Inference-Header-Content-Length value, if the request had one.
    """
    json_part, binary = split_body(body, header_length)
    document = await run_sized(len(json_part), parse_json, json_part)
    request, binary_flags, binary_default = v2.request_from_json(
        name, version, document, binary, deadline, max_json_depth
    )
    request.size = len(body)
    with v2_errors.in_triton_words():
        response = await service.infer(request)
    return await run_sized(
        response.nbytes, v2.response_to_json, response, binary_flags, binary_default
    )


def split_body(body: bytes, header_length: bytes | None) -> tuple[memoryview, memoryview]:
    """Split a body into (JSON header, binary section) by the Inference-Header-Content-Length value.

    Without the header the whole body is JSON. Raises InvalidInput for a value that is not a
    number, is negative or exceeds the body, or is 0 (raw binary requests are not supported).
    """
    view = memoryview(body)
    if header_length is None:
        return view, view[len(view) :]
    text = header_length.strip()
    if not (text.isdigit() and len(text) <= 19):
        shown = repr(text.decode("latin-1")[:40])
        raise InvalidInput(
            f"Inference-Header-Content-Length must be a non-negative integer, got {shown}"
        )
    length = int(text)
    if length > len(body):
        raise InvalidInput(
            f"Inference-Header-Content-Length {length} exceeds the body length {len(body)}"
        )
    if length == 0:
        raise InvalidInput(
            "Inference-Header-Content-Length 0 (a raw binary request) is not supported: send a"
            " JSON header describing the inputs"
        )
    return view[:length], view[length:]


# --- model repository ----------------------------------------------------------------------------


def repository_index_request(body: bytes) -> bool:
    """Parse a `POST /v2/repository/index` body (may be empty); returns its `ready` flag."""
    if not body.strip():
        return False
    request = parse_json(body)
    if not isinstance(request, dict):
        raise InvalidInput("repository index request must be a JSON object")
    ready = request.get("ready", False)
    if not isinstance(ready, bool):
        raise InvalidInput("repository index request: 'ready' must be true or false")
    return ready


def repository_index(entries: Iterable[Mapping[str, str]], ready_only: bool) -> bytes:
    """The index response: a JSON array of {name, version, state, reason}."""
    return orjson.dumps(v2_metadata.repository_index(entries, ready_only))


def index_from_service(service: InferenceService) -> list[Mapping[str, str]]:
    """Index entries from the models the service knows (model control disabled)."""
    entries: list[Mapping[str, str]] = []
    on_demand = service.on_demand
    for name in service.model_names():
        if on_demand is not None and on_demand.is_on_demand(name) and not on_demand.is_loaded(name):
            # an on-demand model waiting for its first request, or evicted (INTERFACE §13)
            entries.append(
                {"name": name, "version": "", "state": "UNAVAILABLE", "reason": "not loaded"}
            )
            continue
        try:
            states = service.model_status(name)
        except NotFound:
            entries.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": ""})
            continue
        for status in sorted(states, key=lambda s: s.id.version):
            ready = status.state.name == "AVAILABLE"
            entries.append(
                {
                    "name": name,
                    "version": str(status.id.version),
                    "state": "READY" if ready else "UNAVAILABLE",
                    "reason": status.error or ("" if ready else status.state.name),
                }
            )
    return entries


def check_repository_request(name: str, body: bytes, action: str) -> None:
    """Validate a load/unload body (empty, or an object with `parameters`) by V2's rules."""
    parameters: Iterable[str] = ()
    if body.strip():
        request = parse_json(body)
        if not isinstance(request, dict):
            raise InvalidInput(f"repository {action} request must be a JSON object")
        parameters = request.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidInput(f"repository {action} request: 'parameters' must be an object")
    v2_metadata.check_repository_request(action, name, "", parameters)


_V2_REPOSITORY_MODEL = re.compile(r"/v2/repository/models/(?P<name>[^/]+)/(?P<action>load|unload)")
_V2_MODEL = re.compile(
    r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?"
    r"(?P<action>/ready|/infer|/config|/stats|/generate|/generate_stream)?"
)

LIVE = orjson.dumps({"live": True})
_READY = orjson.dumps({"ready": True})


class V2Routes:
    """Answers the `/v2` requests over one InferenceService; stateless per request."""

    __slots__ = (
        "_auth",
        "_control",
        "_draining",
        "_limits",
        "_ready_names",
        "_server_metadata",
        "_service",
    )

    def __init__(
        self,
        service: InferenceService,
        limits: RequestLimits,
        server_metadata: bytes,
        ready_names: Callable[[], Iterable[str]],
        is_draining: Callable[[], bool] | None,
        model_control: ModelControl | None,
        control_auth: ControlAuth | None,
    ) -> None:
        self._service = service
        self._limits = limits
        self._server_metadata = server_metadata
        self._ready_names = ready_names
        self._draining = is_draining
        self._control = model_control
        self._auth = control_auth

    async def answer(self, method: str, path: str, scope: Scope, receive: Receive) -> Response:
        """The answer to a request whose path starts with `/v2`."""
        service = self._service
        if path in ("/v2", "/v2/"):
            require_method(method, "GET")
            return ok(self._server_metadata)
        if path == "/v2/health/live":
            require_method(method, "GET")
            return ok(LIVE)
        if path == "/v2/health/ready":
            require_method(method, "GET")
            if self._draining is not None and self._draining():
                message = "not ready: the server is shutting down"
                return 503, error_json(message), [(b"content-type", JSON)]
            reasons = service.not_ready_reasons(self._ready_names())
            if reasons:
                # 503 for every "not ready", draining or not, with each model's reason.
                message = "not ready: " + "; ".join(
                    f"model {m}: {self._why_not_ready(m, r)}" for m, r in reasons.items()
                )
                return 503, error_json(message), [(b"content-type", JSON)]
            return ok(_READY)
        if path.startswith("/v2/repository/"):
            return await self._repository(method, path, scope, receive)
        if path == "/v2/models/stats":
            # every model's; as in Triton, this path is never model "stats"'s metadata
            require_method(method, "GET")
            return ok(await model_statistics(service, "", None))
        match = _V2_MODEL.fullmatch(path)
        if match is None:
            raise HttpError(404, NOT_FOUND)
        name, version_text, action = match.groups()
        name = path_segment(name)
        request_model.set(name)
        version = path_version(version_text)
        limits = self._limits
        if action in ("/generate", "/generate_stream"):
            require_method(method, "POST")
            body, _ = await limits.read_body(scope, receive)
            streamed = action == "/generate_stream"
            deadline = limits.deadline()
            # the stream opens (or is refused) before `answer` returns: a miss is worded here
            with v2_errors.in_triton_words():
                return await generate.answer(
                    service, name, version, body, deadline, streamed, receive, limits.max_json_depth
                )
        if action == "/infer":
            require_method(method, "POST")
            body, header_length = await limits.read_body(scope, receive)
            # a pipeline's steps stop when the client leaves (serving/pipeline.py)
            watching = client_watch.set(functools.partial(until_client_gone, receive))
            try:
                result, json_length = await infer(
                    service,
                    name,
                    version,
                    body,
                    header_length,
                    limits.deadline(),
                    limits.max_json_depth,
                )
            finally:
                client_watch.reset(watching)
            if json_length is None:
                return ok(result)
            headers = [
                (b"content-type", OCTET_STREAM),
                (HEADER_LENGTH, str(json_length).encode()),
            ]
            return 200, result, headers
        require_method(method, "GET")
        if action is None:
            return ok(model_metadata(service, name, version))
        if action == "/config":
            return ok(model_config(service, name, version))
        if action == "/stats":
            return ok(await model_statistics(service, name, version))
        reason = service.model_not_ready_reason(name, version)
        if reason is None:
            return ok(orjson.dumps({"name": name, "ready": True}))
        what = f'model "{name}"' + (f" version {version}" if version is not None else "")
        return 400, error_json(f"{what} is not ready: {reason}"), [(b"content-type", JSON)]

    def _why_not_ready(self, name: str, reason: str) -> str:
        """`reason`, with what status knows of `name`'s versions when none is AVAILABLE."""
        if self._service.available_versions(name):
            return reason
        try:
            states = self._service.model_status(name)
        except NotFound:
            states = []
        return why_unavailable(states)

    async def _repository(self, method: str, path: str, scope: Scope, receive: Receive) -> Response:
        """`POST /v2/repository/index` (always), `.../models/{m}/load|unload` (model control)."""
        if path == "/v2/repository/index":
            require_method(method, "POST")
            body, _ = await self._limits.read_body(scope, receive)
            ready_only = repository_index_request(body)
            if self._control is None:
                entries = index_from_service(self._service)
            else:
                entries = list(await asyncio.to_thread(self._control.repository_index))
            return ok(repository_index(entries, ready_only))
        match = _V2_REPOSITORY_MODEL.fullmatch(path)
        if match is None:
            raise HttpError(404, NOT_FOUND)
        require_method(method, "POST")
        control = require_control(self._control)
        if self._auth is not None:
            try:
                self._auth.check(header(scope, b"authorization"))
            except Unauthenticated as exc:
                raise HttpError(
                    401, error_json(exc.message), [(b"www-authenticate", b"Bearer")]
                ) from None
        body, _ = await self._limits.read_body(scope, receive)
        name, action = match.groups()
        name = path_segment(name)
        check_repository_request(name, body, action)
        await asyncio.to_thread(
            control.load_model if action == "load" else control.unload_model, name
        )
        return ok(b"{}")
