"""KServe V2 REST codec: the JSON (+ binary tensor data) body ⇄ protocols.v2, nothing more.

The protocol's rules live in `pyserving.protocols.v2`, shared with the gRPC API; this module reads
the REST framing (`Inference-Header-Content-Length`), calls the service and writes JSON. Every
function returns the body of a 200 answer or raises a ServingError.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import orjson

from pyserving.api.rest.binary import split_body
from pyserving.errors import InvalidInput, NotFound
from pyserving.protocols import v2
from pyserving.protocols.json_tensor import parse_json
from pyserving.serving.inference import InferenceService

__all__ = [
    "check_repository_request",
    "index_from_service",
    "infer",
    "model_config",
    "model_metadata",
    "repository_index",
    "repository_index_request",
    "server_metadata",
]


def server_metadata(server_version: str) -> bytes:
    """`GET /v2`: name, version and extensions."""
    return orjson.dumps(v2.server_metadata(server_version, v2.REST_EXTENSIONS))


def model_metadata(service: InferenceService, name: str, version: int | None) -> bytes:
    """`GET /v2/models/{m}[/versions/{v}]`: versions, platform, inputs and outputs."""
    with service.acquire(name, version) as handle:
        signature = service.signature(handle, None)
        servable = handle.servable
    versions = service.available_versions(name)
    return orjson.dumps(v2.model_metadata(name, versions, servable, signature))


def model_config(service: InferenceService, name: str, version: int | None) -> bytes:
    """`GET /v2/models/{m}[/versions/{v}]/config`: a Triton-style model configuration."""
    with service.acquire(name, version) as handle:
        signature = service.signature(handle, None)
        servable = handle.servable
    return orjson.dumps(v2.model_config(name, servable, signature))


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
    request, binary_flags, binary_default = v2.request_from_json(
        name, version, parse_json(json_part), binary, deadline, max_json_depth
    )
    response = await service.infer(request)
    return v2.response_to_json(response, binary_flags, binary_default)


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
    return orjson.dumps(v2.repository_index(entries, ready_only))


def index_from_service(service: InferenceService) -> list[Mapping[str, str]]:
    """Index entries from the models the service knows (model control disabled)."""
    entries: list[Mapping[str, str]] = []
    for name in service.model_names():
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
    parameters: object = {}
    if body.strip():
        request = parse_json(body)
        if not isinstance(request, dict):
            raise InvalidInput(f"repository {action} request must be a JSON object")
        parameters = request.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidInput(f"repository {action} request: 'parameters' must be an object")
    v2.check_repository_request(action, name, "", parameters)
