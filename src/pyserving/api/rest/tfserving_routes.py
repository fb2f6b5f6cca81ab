"""The TF Serving REST routes (`/v1/models/...`): list, status, metadata, predict, classify and
regress; tfserving.py does the formats. Paths match case-insensitively, as TF Serving's do, and
a bad path or method is 400 "Malformed request: METHOD PATH"."""

from __future__ import annotations

import re

from pyserving.api.rest import tfserving
from pyserving.api.rest.asgi import Receive, Scope
from pyserving.api.rest.request import RequestLimits, path_segment, path_version, request_model
from pyserving.api.rest.responses import Response, ok
from pyserving.errors import InvalidInput
from pyserving.serving.inference import InferenceService

_V1_LIST = re.compile(r"/v1/models/?", re.IGNORECASE)
_V1_MODEL = re.compile(
    r"/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?:(?P<metadata>/metadata)|:(?P<verb>predict|classify|regress))?",
    re.IGNORECASE,
)


class TfServingRoutes:
    """Answers the `/v1` requests over one InferenceService; stateless per request."""

    __slots__ = ("_limits", "_service")

    def __init__(self, service: InferenceService, limits: RequestLimits) -> None:
        self._service = service
        self._limits = limits

    async def answer(self, method: str, path: str, scope: Scope, receive: Receive) -> Response:
        """The answer to a request whose path starts with `/v1/` (any case)."""
        match = _V1_MODEL.fullmatch(path)
        if match is None:
            if method == "GET" and _V1_LIST.fullmatch(path):
                return ok(tfserving.list_models(self._service))
            raise InvalidInput(f"Malformed request: {method} {path}")
        name, version_text, label, metadata, verb = match.groups()
        name = path_segment(name)
        label = path_segment(label) if label is not None else None
        request_model.set(name)
        version = path_version(version_text)
        service = self._service
        if verb is None:
            if method != "GET":
                raise InvalidInput(f"Malformed request: {method} {path}")
            if metadata:
                return ok(tfserving.model_metadata(service, name, version, label))
            return ok(tfserving.model_status(service, name, version, label))
        if method != "POST":
            raise InvalidInput(f"Malformed request: {method} {path}")
        verb = verb.lower()
        limits = self._limits
        body, _ = await limits.read_body(scope, receive)
        if verb != "predict":
            return ok(
                await tfserving.classify_or_regress(
                    service, name, version, label, verb, body, limits.deadline()
                )
            )
        result = await tfserving.predict(
            service, name, version, label, body, limits.deadline(), limits.max_json_depth
        )
        return ok(result)
