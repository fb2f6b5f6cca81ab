"""The KServe V2 REST routes (`/v2/...`): server metadata, health, model metadata, config,
statistics and readiness, infer, Triton's generate extension, and the repository API (index
always; load/unload only with model control). v2.py and generate.py do the formats."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterable

import orjson

from pyserving.api.control_auth import ControlAuth
from pyserving.api.grpc.control import ModelControl, require_control
from pyserving.api.rest import generate, v2
from pyserving.api.rest.asgi import Receive, Scope
from pyserving.api.rest.request import (
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
from pyserving.api.rest.v2 import HEADER_LENGTH
from pyserving.core.monitor import why_unavailable
from pyserving.errors import NotFound, Unauthenticated
from pyserving.protocols import v2_errors
from pyserving.serving.inference import InferenceService

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
            return ok(await v2.model_statistics(service, "", None))
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
            result, json_length = await v2.infer(
                service,
                name,
                version,
                body,
                header_length,
                limits.deadline(),
                limits.max_json_depth,
            )
            if json_length is None:
                return ok(result)
            headers = [
                (b"content-type", OCTET_STREAM),
                (HEADER_LENGTH, str(json_length).encode()),
            ]
            return 200, result, headers
        require_method(method, "GET")
        if action is None:
            return ok(v2.model_metadata(service, name, version))
        if action == "/config":
            return ok(v2.model_config(service, name, version))
        if action == "/stats":
            return ok(await v2.model_statistics(service, name, version))
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
            ready_only = v2.repository_index_request(body)
            if self._control is None:
                entries = v2.index_from_service(self._service)
            else:
                entries = list(await asyncio.to_thread(self._control.repository_index))
            return ok(v2.repository_index(entries, ready_only))
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
        v2.check_repository_request(name, body, action)
        await asyncio.to_thread(
            control.load_model if action == "load" else control.unload_model, name
        )
        return ok(b"{}")
