"""The TF Serving REST API (`/v1/models/...`): its routes and its codec — model status, metadata,
predict in row and columnar form, classify and regress.

Paths match case-insensitively, as TF Serving's do, and a bad path or method is 400 "Malformed
request: METHOD PATH". The protocol's rules live in `pyserving.protocols.tfserving` and
`protocols.tf_examples`, shared with the gRPC API; this module parses the body, calls the service
and writes JSON. Our additions: `GET /v1/models` lists models, and the `/labels/{l}` status form
returns only the labelled version. Codec functions return the JSON body of a 200 answer or raise
a ServingError.
"""

from __future__ import annotations

import functools
import re

import orjson

from pyserving.api.rest.asgi import Receive, Scope
from pyserving.api.rest.disconnect import until_client_gone
from pyserving.api.rest.request import RequestLimits, path_segment, path_version, request_model
from pyserving.api.rest.responses import Response, ok
from pyserving.errors import InvalidInput, NotFound
from pyserving.platforms.signature import Signature
from pyserving.protocols import tf_examples, tf_metadata, tfserving
from pyserving.protocols.json_tensor import parse_json
from pyserving.serving import classify
from pyserving.serving.inference import InferenceService
from pyserving.serving.off_loop import run_sized
from pyserving.serving.pipeline import client_watch

__all__ = [
    "TfServingRoutes",
    "classify_or_regress",
    "list_models",
    "model_metadata",
    "model_status",
    "predict",
]


def list_models(service: InferenceService) -> bytes:
    """`GET /v1/models` (our addition): every model with its AVAILABLE versions and status.

    `{"models": [{"name": "mlp", "versions": ["2", "1"], "model_version_status": [...]}]}`,
    versions highest first, in the status format of `GET /v1/models/{m}`.
    """
    models = []
    for name in service.model_names():
        try:
            states = service.model_status(name)
        except NotFound:
            states = []
        models.append(
            {
                "name": name,
                "versions": [str(v) for v in service.available_versions(name)],
                "model_version_status": tf_metadata.status_json(states),
            }
        )
    return orjson.dumps({"models": models})


def model_status(
    service: InferenceService, name: str, version: int | None, label: str | None
) -> bytes:
    """`GET /v1/models/{m}[/versions/{v}|/labels/{l}]`: GetModelStatusResponse as JSON."""
    states = service.model_status(name, version, label)
    return orjson.dumps({"model_version_status": tf_metadata.status_json(states)})


def model_metadata(
    service: InferenceService, name: str, version: int | None, label: str | None
) -> bytes:
    """`GET .../metadata`: the signature_def map of the version that would answer a predict."""
    with service.acquire(name, version, label) as handle:
        signatures: dict[str, Signature] = handle.servable.signatures
        answered = handle.id.version
    definitions = {key: tf_metadata.signature_def_json(sig) for key, sig in signatures.items()}
    return orjson.dumps(
        {
            "model_spec": {"name": name, "signature_name": "", "version": str(answered)},
            "metadata": {"signature_def": {"signature_def": definitions}},
        }
    )


async def predict(
    service: InferenceService,
    name: str,
    version: int | None,
    label: str | None,
    body: bytes,
    deadline: float | None,
    max_json_depth: int,
) -> bytes:
    """`POST ...:predict`: `instances` → `{"predictions": ...}`, `inputs` → `{"outputs": ...}`."""
    document = await run_sized(len(body), parse_json, body)
    request, rows = tfserving.predict_from_json(
        name, version, label, document, deadline, max_json_depth
    )
    request.size = len(body)
    response = await service.infer(request)
    return await run_sized(response.nbytes, tfserving.predict_to_json, response, rows)


async def classify_or_regress(
    service: InferenceService,
    name: str,
    version: int | None,
    label: str | None,
    verb: str,
    body: bytes,
    deadline: float | None,
) -> bytes:
    """`POST ...:classify|:regress`: examples (+ context) → `{"results": ...}` (tfserving.md §3.4).

    Classify answers `[[[label, score], ...] per example]`, regress `[value per example]`.
    """
    document = await run_sized(len(body), parse_json, body)
    signature_name, examples, context = await run_sized(
        len(body), tf_examples.examples_from_json, document
    )
    if verb == "classify":
        classified = await classify.classify(
            service, name, version, label, signature_name, examples, context, deadline
        )
        return tf_examples.classification_json(classified.classes)
    regressed = await classify.regress(
        service, name, version, label, signature_name, examples, context, deadline
    )
    return tf_examples.regression_json(regressed.values)


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
                return ok(list_models(self._service))
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
                return ok(model_metadata(service, name, version, label))
            return ok(model_status(service, name, version, label))
        if method != "POST":
            raise InvalidInput(f"Malformed request: {method} {path}")
        verb = verb.lower()
        limits = self._limits
        body, _ = await limits.read_body(scope, receive)
        if verb != "predict":
            return ok(
                await classify_or_regress(
                    service, name, version, label, verb, body, limits.deadline()
                )
            )
        # a pipeline's steps stop when the client leaves (serving/pipeline.py)
        watching = client_watch.set(functools.partial(until_client_gone, receive))
        try:
            result = await predict(
                service, name, version, label, body, limits.deadline(), limits.max_json_depth
            )
        finally:
            client_watch.reset(watching)
        return ok(result)
